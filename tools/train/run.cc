// sinkscope-train: the whole command (data, resume / init-from / fresh, the training loop with logging, evaluation
// and checkpoints, export with training.json and SHA256SUMS). See trainer.h.
#include <ATen/Parallel.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/model/runtime.h"
#include "common/util/sha256.h"
#include "common/util/status_macros.h"
#include "tools/train/trainer.h"

namespace sinkscope::train {
namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;
using model::LlamaConfig;

namespace {

// Keeps the CSV rows of steps <= `upto` (a resumed run rewrites what came after its checkpoint).
absl::Status TruncateCsv(const std::string& path, int64_t upto) {
  auto text = ReadFile(path);
  if (!text.ok()) return absl::OkStatus();
  std::string out;
  bool header = true;
  for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
    if (header) {
      absl::StrAppend(&out, line, "\n");
      header = false;
      continue;
    }
    int64_t step = 0;
    const size_t comma = line.find(',');
    if (comma != absl::string_view::npos) step = std::atoll(std::string(line.substr(0, comma)).c_str());
    if (step <= upto) absl::StrAppend(&out, line, "\n");
  }
  return WriteFileAtomic(path, out);
}

// The run's settings. The model shape is the trained model's (with --init-from it comes from the source, not flags).
ojson OptionsJson(const TrainOptions& o, const LlamaConfig& c) {
  ojson j;
  j["layers"] = c.num_hidden_layers;
  j["hidden"] = c.hidden_size;
  j["heads"] = c.num_attention_heads;
  j["kv_heads"] = c.num_key_value_heads;
  j["intermediate"] = c.intermediate_size;
  j["rope_theta"] = c.rope_theta;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["attention"] = o.attention;
  j["seq_len"] = o.seq_len;
  j["batch"] = o.batch;
  j["steps"] = o.steps;
  j["warmup"] = o.warmup;
  j["lr"] = o.lr;
  j["min_lr_ratio"] = o.min_lr_ratio;
  j["weight_decay"] = o.weight_decay;
  j["betas"] = {o.beta1, o.beta2};
  j["adam_eps"] = o.adam_eps;
  j["grad_clip"] = o.grad_clip;
  j["init_std"] = o.init_std;
  j["seed"] = o.seed;
  j["threads"] = o.threads;
  j["compute_dtype"] = o.compute_dtype;
  j["export_dtype"] = o.export_dtype;
  j["init_from"] = o.init_from;
  j["eval_every"] = o.eval_every;
  j["eval_windows"] = o.eval_windows;
  return j;
}

}  // namespace

absl::Status RunTraining(const TrainOptions& opts) {
  model::TuneMallocForTensors();
  model::SetComputeThreads(opts.threads);
  const double wall0 = NowSeconds();
  const std::string run_dir = opts.run_dir.empty() ? (fs::path("build/train") / opts.name).string() : opts.run_dir;
  const std::string ckpt_dir = (fs::path(run_dir) / "checkpoint").string();
  const std::string csv_path = (fs::path(run_dir) / "train_log.csv").string();
  std::error_code ec;
  fs::create_directories(run_dir, ec);

  ASSIGN_OR_RETURN(auto tok, tokenizer::Tokenizer::LoadFromDir(opts.tokenizer_dir));
  bool cached = false;
  const std::string train_cache =
      (fs::path(opts.cache_dir) / (fs::path(opts.train_text).stem().string() + ".ids")).string();
  ASSIGN_OR_RETURN(std::vector<int32_t> stream, LoadOrEncodeCorpus(opts.train_text, *tok, train_cache, &cached));
  std::cout << absl::StrFormat("data: %s -> %d tokens (%s %s)\n", opts.train_text, stream.size(),
                               cached ? "cached in" : "encoded, cached to", train_cache);
  const std::string heldout_cache =
      (fs::path(opts.cache_dir) / (fs::path(opts.heldout_text).stem().string() + ".ids")).string();
  ASSIGN_OR_RETURN(std::vector<int32_t> heldout, LoadOrEncodeCorpus(opts.heldout_text, *tok, heldout_cache));
  const std::vector<int64_t> eval_windows =
      EvalWindows(heldout, opts.seq_len, tok->bos_id(), opts.eval_windows);
  std::cout << absl::StrFormat("data: %s -> %d tokens, %d evaluation windows of %d\n", opts.heldout_text,
                               heldout.size(), eval_windows.size() / opts.seq_len, opts.seq_len);

  LlamaConfig cfg;
  if (!opts.init_from.empty()) {
    ASSIGN_OR_RETURN(auto src, LoadWeightsFrom(opts.init_from));
    cfg = src.first;
    if (opts.attention == "nope") cfg = ToDrope(cfg);
    else if (opts.attention != "rope") return absl::InvalidArgumentError("--attention must be rope or nope");
    else if (!cfg.uses_rope()) return absl::InvalidArgumentError("--init-from a NoPE model with --attention rope");
    cfg.torch_dtype = opts.export_dtype;
  } else {
    ASSIGN_OR_RETURN(cfg, MakeConfig(opts, tok->vocab_size()));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Trainer> tr, Trainer::Create(opts, cfg, &stream));
  std::cout << absl::StrFormat("model: %s attention=%s %s, %d parameters; compute %s, %d threads\n", cfg.model_type,
                               model::AttentionTypeName(cfg.attention_type), ShapeKey(cfg), cfg.num_parameters(),
                               opts.compute_dtype, at::get_num_threads());

  const bool resuming = opts.resume && fs::exists(fs::path(ckpt_dir) / "state.json");
  if (resuming) {
    RETURN_IF_ERROR(tr->LoadCheckpoint(ckpt_dir));
    RETURN_IF_ERROR(TruncateCsv(csv_path, tr->step()));
    std::cout << absl::StrFormat("resume: %s at step %d (%d tokens seen, %.0f s so far)\n", ckpt_dir, tr->step(),
                                 tr->tokens_seen(), tr->elapsed_s());
  } else {
    fs::remove(csv_path, ec);
  }
  std::ofstream csv(csv_path, std::ios::app);
  if (!resuming) csv << "step,lr,train_loss,grad_norm,heldout_loss,tokens_seen,step_ms,elapsed_s\n";

  auto eval = [&]() -> absl::StatusOr<double> {
    return tr->EvalLoss(eval_windows);
  };
  if (tr->step() == 0) {
    ASSIGN_OR_RETURN(double l0, eval());
    std::cout << absl::StrFormat("step 0 heldout_loss %.4f\n", l0);
    csv << absl::StrFormat("0,0,,,%.6f,0,,0\n", l0);
  }

  double seg0 = NowSeconds(), loss_acc = 0, ms_acc = 0;
  int64_t acc_n = 0;
  while (tr->step() < opts.steps) {
    ASSIGN_OR_RETURN(Trainer::StepStats st, tr->Step());
    const double now = NowSeconds();
    tr->add_elapsed(now - seg0);
    seg0 = now;
    loss_acc += st.loss;
    ms_acc += st.step_ms;
    ++acc_n;
    std::string heldout_field;
    if ((opts.eval_every > 0 && st.step % opts.eval_every == 0) || st.step == opts.steps) {
      ASSIGN_OR_RETURN(double l, eval());
      heldout_field = absl::StrFormat("%.6f", l);
      std::cout << absl::StrFormat("step %d heldout_loss %.4f (ppl %.1f)\n", st.step, l, std::exp(l));
      const double now2 = NowSeconds();
      tr->add_elapsed(now2 - seg0);
      seg0 = now2;
    }
    csv << absl::StrFormat("%d,%.6g,%.6f,%.4f,%s,%d,%.1f,%.1f\n", st.step, st.lr, st.loss, st.grad_norm, heldout_field,
                           tr->tokens_seen(), st.step_ms, tr->elapsed_s());
    if (opts.log_every > 0 && (st.step % opts.log_every == 0 || st.step == opts.steps)) {
      csv.flush();
      std::cout << absl::StrFormat("step %d/%d lr %.3g loss %.4f gnorm %.3f %.0f ms/step %.0f tok/s elapsed %.0f s\n",
                                   st.step, opts.steps, st.lr, loss_acc / acc_n, st.grad_norm, ms_acc / acc_n,
                                   1e3 * opts.batch * opts.seq_len / (ms_acc / acc_n), tr->elapsed_s())
                << std::flush;
      loss_acc = ms_acc = 0;
      acc_n = 0;
    }
    if ((opts.ckpt_every > 0 && st.step % opts.ckpt_every == 0) || st.step == opts.steps) {
      csv.flush();
      RETURN_IF_ERROR(tr->SaveCheckpoint(ckpt_dir));
      const double now3 = NowSeconds();
      tr->add_elapsed(now3 - seg0);
      seg0 = now3;
    }
  }
  csv.close();
  std::cout << absl::StrFormat("train: %d steps, %d tokens seen, %.0f s training wall time\n", tr->step(),
                               tr->tokens_seen(), tr->elapsed_s());
  if (opts.out.empty()) return absl::OkStatus();

  // ---- export: HF snapshot, then load it back through the engine and score the held-out text with it.
  ASSIGN_OR_RETURN(std::vector<TensorBytes> tensors, WeightsToTensorBytes(tr->weights(), opts.export_dtype));
  ExportOptions eo;
  eo.shards = opts.shards;
  eo.tokenizer_dir = opts.tokenizer_dir;
  RETURN_IF_ERROR(WriteHfDirectory(opts.out, tr->config(), tensors, eo));
  model::LoadOptions lo;
  lo.dtype = "float32";
  ASSIGN_OR_RETURN(auto loaded, model::LlamaModel::Load(opts.out, lo));
  ASSIGN_OR_RETURN(std::string heldout_text, ReadFile(opts.heldout_text));
  const Unigram uni = CountUnigram(stream, tok->vocab_size());
  ASSIGN_OR_RETURN(HeldoutEval he, EvaluateHeldout(*loaded, *tok, NonEmptyLines(heldout_text), opts.heldout_max_lines, uni));
  std::cout << absl::StrFormat("export: %s; held-out PPL %.2f on %d lines / %d tokens (unigram baseline %.2f)\n",
                               opts.out, he.ppl, he.lines, he.tokens, he.unigram_ppl);

  ojson rec;
  rec["name"] = opts.name;
  rec["stage"] = cfg.uses_rope() ? "RoPE pretraining from random init" : "DroPE recalibration (rotary removed)";
  rec["model_type"] = cfg.model_type;
  rec["attention_type"] = model::AttentionTypeName(cfg.attention_type);
  rec["parameters"] = cfg.num_parameters();
  rec["options"] = OptionsJson(opts, tr->config());
  rec["steps"] = tr->step();
  rec["tokens_seen"] = tr->tokens_seen();
  rec["train_wall_time_s"] = std::round(tr->elapsed_s());
  rec["mean_step_ms"] = std::round(1e3 * tr->elapsed_s() / std::max<int64_t>(1, tr->step()));
  // Curves from the CSV, so that a resumed run's record covers the whole run.
  ojson evals = ojson::array();
  std::vector<std::pair<int64_t, double>> train_losses;
  if (auto text = ReadFile(csv_path); text.ok()) {
    bool header = true;
    for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
      if (std::exchange(header, false)) continue;
      std::vector<std::string> f = absl::StrSplit(line, ',');
      if (f.size() < 5) continue;
      if (!f[4].empty()) evals.push_back({{"step", std::stoll(f[0])}, {"heldout_loss", std::stod(f[4])}});
      if (!f[2].empty()) train_losses.emplace_back(std::stoll(f[0]), std::stod(f[2]));
    }
  }
  // Mean training loss over windows of 500 steps (each step's loss is on its own random batch).
  ojson train_curve = ojson::array();
  for (size_t i = 0; i < train_losses.size();) {
    const int64_t lo = (train_losses[i].first - 1) / 500 * 500;
    double sum = 0;
    int64_t n = 0;
    for (; i < train_losses.size() && train_losses[i].first <= lo + 500; ++i, ++n) sum += train_losses[i].second;
    train_curve.push_back({{"steps", absl::StrCat(lo + 1, "-", lo + n)}, {"mean_train_loss", sum / n}});
  }
  rec["train_loss_curve"] = train_curve;
  rec["train_loss_curve_definition"] = absl::StrFormat(
      "mean training cross entropy (nats, %s compute) of the steps in each 500-step window", opts.compute_dtype);
  rec["heldout_loss_curve"] = evals;
  rec["heldout_loss_curve_definition"] = absl::StrFormat(
      "mean next-token cross entropy (nats) over %d fixed windows (BOS + %d tokens at evenly spaced starts of the "
      "held-out token stream), computed during training in %s",
      eval_windows.size() / opts.seq_len, opts.seq_len - 1, opts.compute_dtype);
  rec["heldout_perplexity"] = {
      {"value", he.ppl},
      {"mean_nll", he.nll},
      {"lines", he.lines},
      {"target_tokens", he.tokens},
      {"dataset", opts.heldout_text},
      {"definition",
       absl::StrFormat("exp(mean target NLL): each non-empty held-out line encoded with BOS, truncated to %d tokens, "
                       "scored by the exported snapshot loaded with LlamaModel::Load (float32), LlamaForward "
                       "return_target_nll; every token after BOS is a target",
                       cfg.max_position_embeddings)}};
  rec["unigram_baseline"] = {
      {"perplexity", he.unigram_ppl},
      {"definition",
       "add-one smoothed unigram p(i) = (count_i + 1) / (N + V) with counts over the training token stream "
       "(documents' lines encoded without BOS, one EOS per document), evaluated on exactly the same held-out targets"},
      {"train_tokens", uni.total},
      {"vocab_size", tok->vocab_size()},
      {"counts", uni.counts}};
  rec["train_text_sha256"] = util::Sha256Hex(*ReadFile(opts.train_text));
  rec["tokenizer_sha256"] = tok->digest();
  rec["total_wall_time_s"] = std::round(NowSeconds() - wall0);
  RETURN_IF_ERROR(WriteFileAtomic((fs::path(opts.out) / "training.json").string(), rec.dump(1) + "\n"));
  RETURN_IF_ERROR(WriteSha256Sums(opts.out));
  std::cout << "export: wrote " << opts.out << " (SHA256SUMS updated)\n";
  return absl::OkStatus();
}

}  // namespace sinkscope::train
