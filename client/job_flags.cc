#include "client/job_flags.h"

#include <google/protobuf/util/json_util.h>

#include <CLI/CLI.hpp>
#include <fstream>
#include <initializer_list>
#include <iostream>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace sinkscope::client {
namespace v1 = sinkscope::v1;

void AddJobFlags(CLI::App* app, JobFlags* f) {
  app->add_option("-m,--model", f->models, "Model name (repeat, or comma-separate, for a paired comparison)")
      ->delimiter(',');
  app->add_option("-t,--text", f->texts, "Inline prompt text (repeatable)");
  app->add_option("--texts-file", f->texts_file, "File with one prompt per line ('-' = stdin)");
  app->add_option("-d,--dataset", f->dataset, "Built-in dataset name (see `sinkscope datasets`)");
  app->add_option("--ids", f->ids, "Pre-tokenised prompt as comma-separated ids (repeatable)");
  app->add_option("--max-prompts", f->max_prompts, "Use only the first N prompts")->check(CLI::NonNegativeNumber);
  app->add_flag("--truncate-to-context", f->truncate_to_context,
                "Cut prompts longer than a model's context to it (else such a prompt is an error)");
  app->add_option("--max-tokens", f->max_tokens, "Truncate prompts to N tokens incl. BOS")
      ->check(CLI::NonNegativeNumber);
  auto* g = app->add_option_group("analyses");
  g->add_flag("--phase", f->phase,
              "Preset: the study's phase comparison (sink rate, BOS residual stats, matrix entropy, massive Q/K/V, "
              "perplexity with BOS-MLP ablation at the spike layer)");
  g->add_flag("--sink-rate", f->sink_rate, "Attention sink rate per layer/head");
  g->add_option("--tau", f->tau, "Sink threshold τ in [0,1] (default 0.3)");
  g->add_option("--query-rows", f->query_rows, "Sink score rows: all (study) | exclude-bos");
  g->add_option("--attention", f->attention, "Sink attention source: model (true) | pre-rotary (study's manual)");
  g->add_flag("--massive", f->massive, "Massive values in Q/K/V");
  g->add_option("--lambda", f->lambda, "Massive threshold λ (default 5)");
  g->add_flag("--post-rotary", f->post_rotary, "Massive values on post-rotary q/k");
  g->add_option("--scope", f->scope, "Massive threshold reference: layer (study) | head");
  g->add_option("--top-k", f->top_k, "Top entries to report (massive values, activation stats)");
  g->add_flag("--residual", f->residual, "BOS residual norm statistics and spike layer");
  g->add_flag("--entropy", f->entropy, "Matrix (representation) entropy per layer");
  g->add_flag("--normalized-entropy", f->normalized_entropy, "Also report entropy / ln(rank)");
  g->add_flag("--final-norm-last-layer", f->final_norm_last_layer,
              "Study quirk: last layer's residual metrics after the final RMSNorm");
  g->add_flag("--perplexity", f->perplexity, "Token-weighted perplexity (baseline)");
  g->add_flag("--weight-by-t", f->weight_by_t, "Perplexity weighting by T instead of T-1 (study variant)");
  g->add_option("--bos-mlp", f->bos_mlp, "BOS-MLP ablation perplexity: spike | jump | LAYER (repeatable)");
  g->add_flag("--qk-disruption", f->qk_disruption, "Q/K massive-dimension disruption perplexity");
  g->add_option("--qk-replacement", f->qk_replacement, "Disruption replacement: zero (study) | mean");
  g->add_option("--control-seeds", f->control_seeds, "Random-dimension control seeds (e.g. 42,43,44)")->delimiter(',');
  g->add_option("--top-per-head", f->top_per_head, "Jin-style top-k per head mean replacement perplexity");
  g->add_option("--ablate-heads", f->ablate_heads, "Head ablation perplexity, heads as L:H (comma-separated)")
      ->delimiter(',');
  g->add_option("--stats", f->stats_hooks, "Activation statistics at hook points (e.g. 'blocks.{L}.hook_resid_post')");
  g->add_option("--spec", f->spec_file,
                "JobSpec JSON (examples/specs/); -m, --max-prompts, --max-tokens, the output switches and the "
                "scheduling flags apply on top of it");
  auto* o = app->add_option_group("outputs");
  o->add_flag("--per-prompt", f->per_prompt,
              "Also each prompt's own per-layer metrics and perplexity (not only means over prompts)");
  o->add_flag("--emit-token-ids", f->emit_token_ids, "Also each prompt's token ids as run (implies --per-prompt)");
  o->add_flag("--no-cache", f->no_cache, "Run even if the server has this job's results cached (and refresh them)");
  app->add_option("--priority", f->priority, "Priority in [-10,10] (higher first)");
  app->add_option("--deadline", f->deadline, "Cancel the job if not done after this many seconds");
  app->add_option("--label", f->label, "Free-text label stored with the job");
  app->add_option("--seed", f->seed, "Seed for random controls (default 42)");
}

namespace {

absl::Status Bad(const std::string& flag, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(flag, ": ", why));
}

absl::StatusOr<std::string> ReadFile(const std::string& flag, const std::string& path) {
  std::stringstream ss;
  if (path == "-") {
    ss << std::cin.rdbuf();
  } else {
    std::ifstream in(path);
    if (!in) return Bad(flag, absl::StrCat("cannot read ", path));
    ss << in.rdbuf();
  }
  return ss.str();
}

// Maps a flag that takes one of a few words to its enum value: "" gives `if_empty`, an unknown word an
// InvalidArgument listing the words in the order given ("--scope: expected layer or head").
template <typename Enum>
absl::StatusOr<Enum> Choice(const std::string& flag, const std::string& value, Enum if_empty,
                            std::initializer_list<std::pair<absl::string_view, Enum>> words) {
  if (value.empty()) return if_empty;
  std::vector<absl::string_view> names;
  for (const auto& [name, e] : words) {
    if (value == name) return e;
    names.push_back(name);
  }
  return Bad(flag, absl::StrCat("expected ", absl::StrJoin(names, " or ")));
}

// The on/off switches of a job, which a --spec file's own settings cannot turn off either.
void SetSwitches(const JobFlags& f, v1::JobSpec* spec) {
  if (f.per_prompt || f.emit_token_ids) spec->set_per_prompt(true);
  if (f.emit_token_ids) spec->set_emit_token_ids(true);
  if (f.truncate_to_context) spec->set_truncate_to_context(true);
  if (f.no_cache) spec->set_no_cache(true);
}

}  // namespace

absl::StatusOr<v1::JobSpec> BuildJobSpec(const JobFlags& f) {
  v1::JobSpec spec;
  const bool any = f.phase || f.sink_rate || f.massive || f.residual || f.entropy || f.perplexity ||
                   !f.bos_mlp.empty() || f.qk_disruption || f.top_per_head > 0 || !f.ablate_heads.empty() ||
                   !f.stats_hooks.empty();
  const int sources = !f.texts.empty() + !f.texts_file.empty() + !f.dataset.empty() + !f.ids.empty();
  if (!f.spec_file.empty()) {
    if (any || sources > 0)
      return Bad("--spec", "the spec file gives the inputs and analyses: no input or analysis flag with it");
    absl::StatusOr<std::string> text = ReadFile("--spec", f.spec_file);
    if (!text.ok()) return text.status();
    google::protobuf::util::JsonParseOptions o;
    auto st = google::protobuf::util::JsonStringToMessage(*text, &spec, o);
    if (!st.ok()) return Bad("--spec", std::string(st.message()));
    if (!f.models.empty()) {
      spec.clear_models();
      for (const auto& m : f.models) spec.add_models(m);
    }
    SetSwitches(f, &spec);
    if (!f.label.empty()) spec.set_label(f.label);
    if (f.max_prompts > 0) spec.mutable_inputs()->set_max_prompts(f.max_prompts);
    if (f.max_tokens > 0) spec.mutable_limits()->set_max_tokens(f.max_tokens);
    if (f.priority != 0) spec.set_priority(f.priority);
    if (f.deadline > 0) spec.set_deadline_seconds(f.deadline);
    if (f.seed != 0) spec.set_seed(f.seed);
    return spec;
  }
  if (f.models.empty()) return Bad("--model", "at least one model is required");
  for (const auto& m : f.models) spec.add_models(m);

  if (sources != 1) return Bad("inputs", "give exactly one of --text, --texts-file, --dataset, --ids");
  auto* in = spec.mutable_inputs();
  if (!f.texts.empty()) {
    for (const auto& t : f.texts) in->mutable_texts()->add_texts(t);
  } else if (!f.texts_file.empty()) {
    absl::StatusOr<std::string> text = ReadFile("--texts-file", f.texts_file);
    if (!text.ok()) return text.status();
    for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipWhitespace()))
      in->mutable_texts()->add_texts(std::string(line));
    if (in->texts().texts_size() == 0) return Bad("--texts-file", "no non-empty lines");
  } else if (!f.dataset.empty()) {
    in->set_dataset(f.dataset);
  } else {
    for (size_t i = 0; i < f.ids.size(); ++i) {
      auto* p = in->mutable_token_ids()->add_prompts();
      for (absl::string_view tok : absl::StrSplit(f.ids[i], ',', absl::SkipWhitespace())) {
        int32_t id;
        if (!absl::SimpleAtoi(tok, &id))
          return Bad(absl::StrCat("--ids[", i, "]"), absl::StrCat("'", tok, "' is not an integer"));
        p->add_ids(id);
      }
    }
  }
  in->set_max_prompts(f.max_prompts);
  // Unset unless given: an empty Limits message would change the spec's fingerprint (batch resumes compare them).
  if (f.max_tokens > 0) spec.mutable_limits()->set_max_tokens(f.max_tokens);

  if (!any)
    return Bad("analyses",
               "choose at least one (--phase, --sink-rate, --massive, --residual, --entropy, "
               "--perplexity, --bos-mlp, --qk-disruption, --stats, ...)");
  // The enums below have no field presence (proto3), so setting *_UNSPECIFIED for an empty flag is the same as
  // leaving the field unset: the server's default.
  if (f.phase || f.sink_rate) {
    auto* s = spec.add_analyses()->mutable_sink_rate();
    if (f.tau >= 0) s->set_tau(f.tau);
    absl::StatusOr<v1::QueryRows> rows =
        Choice("--query-rows", f.query_rows, v1::QUERY_ROWS_UNSPECIFIED,
               {{"all", v1::QUERY_ROWS_ALL}, {"exclude-bos", v1::QUERY_ROWS_EXCLUDE_BOS}});
    if (!rows.ok()) return rows.status();
    s->set_query_rows(*rows);
    absl::StatusOr<v1::AttentionSource> source =
        Choice("--attention", f.attention, v1::ATTENTION_SOURCE_UNSPECIFIED,
               {{"model", v1::ATTENTION_SOURCE_MODEL}, {"pre-rotary", v1::ATTENTION_SOURCE_PRE_ROTARY}});
    if (!source.ok()) return source.status();
    s->set_source(*source);
  }
  if (f.phase || f.residual)
    spec.add_analyses()->mutable_residual_stats()->set_final_norm_last_layer(f.final_norm_last_layer);
  if (f.phase || f.entropy) {
    auto* e = spec.add_analyses()->mutable_matrix_entropy();
    e->set_final_norm_last_layer(f.final_norm_last_layer);
    e->set_normalized(f.normalized_entropy);
  }
  if (f.phase || f.massive) {
    auto* m = spec.add_analyses()->mutable_massive_values();
    if (f.lambda > 0) m->set_lambda(f.lambda);
    m->set_post_rotary(f.post_rotary);
    absl::StatusOr<v1::ThresholdScope> scope =
        Choice("--scope", f.scope, v1::THRESHOLD_SCOPE_UNSPECIFIED,
               {{"layer", v1::THRESHOLD_SCOPE_LAYER}, {"head", v1::THRESHOLD_SCOPE_HEAD}});
    if (!scope.ok()) return scope.status();
    m->set_scope(*scope);
    m->set_top_k(f.top_k);
  }
  if (!f.stats_hooks.empty()) {
    auto* a = spec.add_analyses()->mutable_activation_stats();
    for (const auto& h : f.stats_hooks) a->add_hooks(h);
    a->set_top_k(f.top_k);
  }
  if (!f.qk_disruption && !f.control_seeds.empty())
    return Bad("--control-seeds", "only with --qk-disruption (random controls of the disrupted dims)");
  if (!f.qk_disruption && !f.qk_replacement.empty()) return Bad("--qk-replacement", "only with --qk-disruption");
  std::vector<std::string> bos = f.bos_mlp;
  if (f.phase && bos.empty()) bos.push_back("spike");
  if (f.phase || f.perplexity || !bos.empty() || f.qk_disruption || f.top_per_head > 0 || !f.ablate_heads.empty()) {
    auto* p = spec.add_analyses()->mutable_perplexity();
    p->set_weight_by_t(f.weight_by_t);
    for (const auto& b : bos) {
      auto* iv = p->add_interventions();
      if (b == "spike" || b == "jump") {  // spike layer by largest BOS norm ratio (study) or largest jump
        iv->mutable_bos_mlp()->set_spike(b == "spike" ? v1::SPIKE_RULE_ARGMAX_RATIO : v1::SPIKE_RULE_ARGMAX_JUMP);
      } else {
        int32_t layer;
        if (!absl::SimpleAtoi(b, &layer) || layer < 0)
          return Bad("--bos-mlp", absl::StrCat("'", b, "' is not spike, jump or a layer"));
        iv->mutable_bos_mlp()->set_layer(layer);
      }
    }
    if (f.qk_disruption) {
      auto* iv = p->add_interventions();
      auto* q = iv->mutable_qk_massive();
      if (f.lambda > 0) q->set_lambda(f.lambda);
      // Unlike the analyses' enums, an empty --qk-replacement is stored as the explicit study default, zero.
      absl::StatusOr<v1::Replacement> replacement =
          Choice("--qk-replacement", f.qk_replacement, v1::REPLACEMENT_ZERO,
                 {{"zero", v1::REPLACEMENT_ZERO}, {"mean", v1::REPLACEMENT_MEAN}});
      if (!replacement.ok()) return replacement.status();
      q->set_replacement(*replacement);
      for (uint64_t s : f.control_seeds) q->add_control_seeds(s);
    }
    if (f.top_per_head > 0) {
      auto* iv = p->add_interventions();
      iv->mutable_top_per_head()->set_k(f.top_per_head);
    }
    if (!f.ablate_heads.empty()) {
      auto* iv = p->add_interventions();
      for (const auto& h : f.ablate_heads) {
        std::pair<std::string, std::string> lh = absl::StrSplit(h, ':');
        int32_t l, hd;
        if (!absl::SimpleAtoi(lh.first, &l) || !absl::SimpleAtoi(lh.second, &hd))
          return Bad("--ablate-heads", absl::StrCat("'", h, "' is not LAYER:HEAD"));
        auto* r = iv->mutable_heads()->add_heads();
        r->set_layer(l);
        r->set_head(hd);
      }
    }
  }
  spec.set_priority(f.priority);
  spec.set_deadline_seconds(f.deadline);
  spec.set_label(f.label);
  spec.set_seed(f.seed);
  SetSwitches(f, &spec);
  return spec;
}

absl::StatusOr<std::vector<std::string>> SplitWords(const std::string& line) {
  std::vector<std::string> words;
  std::string cur;
  bool in_word = false;
  char quote = 0;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quote == '\'') {
      if (c == '\'')
        quote = 0;
      else
        cur += c;
    } else if (quote == '"') {
      if (c == '"')
        quote = 0;
      else if (c == '\\' && i + 1 < line.size() && std::string("\"\\$`").find(line[i + 1]) != std::string::npos)
        cur += line[++i];
      else
        cur += c;
    } else if (c == '\'' || c == '"') {
      quote = c;
      in_word = true;
    } else if (c == '\\' && i + 1 < line.size()) {
      cur += line[++i];
      in_word = true;
    } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
      if (in_word) words.push_back(cur);
      cur.clear();
      in_word = false;
    } else {
      cur += c;
      in_word = true;
    }
  }
  if (quote) return absl::InvalidArgumentError(absl::StrCat("unterminated ", std::string(1, quote), " quote"));
  if (in_word) words.push_back(cur);
  return words;
}

absl::StatusOr<v1::JobSpec> ParseJobArgs(const std::vector<std::string>& args, const std::string& base_dir) {
  CLI::App app{"job"};
  JobFlags f;
  AddJobFlags(&app, &f);
  std::vector<std::string> rev(args.rbegin(), args.rend());  // CLI11 parses a reversed vector
  if (!rev.empty() && (rev.back() == "run" || rev.back() == "submit")) rev.pop_back();
  try {
    app.parse(rev);
  } catch (const CLI::ParseError& e) {
    return absl::InvalidArgumentError(e.what());
  }
  auto rebase = [&](std::string* path) {
    if (!base_dir.empty() && !path->empty() && *path != "-" && (*path)[0] != '/') *path = base_dir + "/" + *path;
  };
  rebase(&f.spec_file);
  rebase(&f.texts_file);
  return BuildJobSpec(f);
}

}  // namespace sinkscope::client
