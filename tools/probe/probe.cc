// sinkscope-probe: runs prompts (token ids) through the engine's forward and writes the logits, per-position target
// NLL and the activations at the requested hook points to ONE safetensors file, so an independent implementation
// (deploy/gpu/hf_compare.py: Hugging Face transformers) can compare every tensor.
//
//   sinkscope-probe --model DIR --prompts prompts.json --out probe.safetensors [--device cuda] [--dtype bfloat16]
//                   [--hooks 'blocks.{L}.hook_resid_post,blocks.{L}.attn.hook_pattern,ln_final.hook_normalized']
//
// prompts.json: [[1, 450, 4013, ...], ...] (or {"prompts": [[...], ...]}). Output tensors, all float32 except ids:
//   p{i}.ids [T] (I64), p{i}.logits [T, V], p{i}.target_nll [T-1], p{i}.<hook name> in the hook's layout (hooks.h;
//   attn.hook_pattern reassembled from its query chunks into [H, T, T]); __metadata__ says model, device, dtype,
//   torch version and per-prompt forward milliseconds.
// Uses only the engine's narrow API (LlamaModel::Load / Forward, HookSet::Observe, AllHookNames) and Tensor methods
// from <ATen/core/Tensor.h>: one cheap TU, no <ATen/ATen.h>.
#include <ATen/core/Tensor.h>
#include <c10/core/GradMode.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_split.h"
#include "common/analysis/activation_stats.h"
#include "common/model/hooks.h"
#include "common/model/llama.h"
#include "common/model/runtime.h"
#include "nlohmann/json.hpp"

namespace {

using sinkscope::model::HookPoint;

struct Blob {
  std::string dtype;  // "F32" | "I64"
  std::vector<int64_t> shape;
  std::string bytes;  // little-endian raw data (x86-64 is little-endian)
};

// Copies a tensor (any device, any floating dtype) as float32 bytes.
std::string FloatBytes(const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kFloat).cpu().contiguous();
  return std::string(reinterpret_cast<const char*>(c.data_ptr<float>()), static_cast<size_t>(c.numel()) * 4);
}

std::vector<int64_t> Shape(const at::Tensor& t) { return std::vector<int64_t>(t.sizes().begin(), t.sizes().end()); }

// safetensors: u64 LE header length, JSON header (offsets relative to the data section), padded with spaces to a
// multiple of 8, then the data in header order.
bool WriteSafetensors(const std::string& path, const std::vector<std::pair<std::string, Blob>>& tensors,
                      const std::map<std::string, std::string>& metadata, std::string* err) {
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  uint64_t off = 0;
  for (const auto& [name, b] : tensors) {
    h[name] = {{"dtype", b.dtype}, {"shape", b.shape}, {"data_offsets", {off, off + b.bytes.size()}}};
    off += b.bytes.size();
  }
  if (!metadata.empty()) h["__metadata__"] = metadata;
  std::string hs = h.dump();
  hs.append((8 - hs.size() % 8) % 8, ' ');
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) {
    *err = "cannot open " + path + " for writing";
    return false;
  }
  uint64_t n = hs.size();
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  f.write(reinterpret_cast<const char*>(len), 8);
  f.write(hs.data(), static_cast<std::streamsize>(hs.size()));
  for (const auto& [name, b] : tensors) f.write(b.bytes.data(), static_cast<std::streamsize>(b.bytes.size()));
  f.close();
  if (!f) {
    *err = "write to " + path + " failed";
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sinkscope-probe: engine forward -> logits + hook activations in one safetensors file"};
  std::string model_dir, prompts_path, out_path, device = "cpu", dtype = "float32";
  std::string hooks = "hook_embed,blocks.{L}.hook_resid_post,blocks.{L}.attn.hook_pattern,ln_final.hook_normalized";
  int threads = 0;
  int64_t chunk = 512;
  app.add_option("--model", model_dir, "HF snapshot directory (config.json + *.safetensors)")->required();
  app.add_option("--prompts", prompts_path, "JSON file: a list of token-id lists")->required();
  app.add_option("--out", out_path, "output .safetensors")->required();
  app.add_option("--device", device, "cpu | cuda | cuda:N");
  app.add_option("--dtype", dtype, "float32 | bfloat16 | float16");
  app.add_option("--hooks", hooks, "comma-separated hook names; {L} expands to every layer; empty: none");
  app.add_option("--threads", threads, "intra-op CPU threads (0: all)");
  app.add_option("--attn-chunk", chunk, "attention query rows per chunk");
  CLI11_PARSE(app, argc, argv);

  std::vector<std::vector<int32_t>> prompts;
  try {
    std::ifstream f(prompts_path);
    if (!f) throw std::runtime_error("cannot read " + prompts_path);
    nlohmann::json j = nlohmann::json::parse(f);
    if (j.is_object()) j = j.at("prompts");
    prompts = j.get<std::vector<std::vector<int32_t>>>();
    if (prompts.empty()) throw std::runtime_error("no prompts");
  } catch (const std::exception& e) {
    std::cerr << "sinkscope-probe: " << prompts_path << ": " << e.what() << "\n";
    return 2;
  }

  sinkscope::model::SetComputeThreads(threads);
  c10::AutoGradMode no_grad(false);
  sinkscope::model::LoadOptions lo;
  lo.device = device;
  lo.dtype = dtype;
  lo.compute_digest = false;
  auto t_load = std::chrono::steady_clock::now();
  auto model = sinkscope::model::LlamaModel::Load(model_dir, lo);
  if (!model.ok()) {
    std::cerr << "sinkscope-probe: " << model.status() << "\n";
    return 1;
  }
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  const sinkscope::model::LlamaConfig& cfg = (*model)->config();
  // "blocks.{L}.x" -> blocks.0.x ... blocks.{n-1}.x, as activation statistics expand them.
  const std::vector<std::string> names = sinkscope::analysis::ExpandHooks(
      absl::StrSplit(hooks, ',', absl::SkipEmpty()), cfg.num_hidden_layers);
  for (const std::string& n : names) {
    absl::Status s = sinkscope::model::ValidateHookName(n, cfg.num_hidden_layers);
    if (!s.ok()) {
      std::cerr << "sinkscope-probe: " << s << "\n";
      return 2;
    }
  }

  std::vector<std::pair<std::string, Blob>> out;
  nlohmann::json times = nlohmann::json::array();
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::string pre = "p" + std::to_string(i) + ".";
    const int64_t T = static_cast<int64_t>(prompts[i].size());
    std::map<std::string, Blob> acts;
    sinkscope::model::HookSet hs;
    for (const std::string& n : names) {
      const bool pattern = n.size() >= 17 && n.compare(n.size() - 17, 17, "attn.hook_pattern") == 0;
      hs.Observe(n, [&acts, n, pattern, T](const HookPoint& hp, const at::Tensor& x) {
        Blob& b = acts[n];
        b.dtype = "F32";
        if (!pattern) {
          b.shape = Shape(x);
          b.bytes = FloatBytes(x);
          return;
        }
        // [H, tq, T] rows [q_offset, q_offset + tq) of the [H, T, T] pattern.
        const int64_t H = x.size(0), tq = x.size(1);
        if (b.bytes.empty()) {
          b.shape = {H, T, T};
          b.bytes.assign(static_cast<size_t>(H * T * T) * 4, '\0');
        }
        const std::string chunk_bytes = FloatBytes(x);
        for (int64_t h = 0; h < H; ++h)
          std::memcpy(&b.bytes[static_cast<size_t>((h * T + hp.q_offset) * T) * 4],
                      &chunk_bytes[static_cast<size_t>(h * tq * T) * 4], static_cast<size_t>(tq * T) * 4);
      });
    }
    sinkscope::model::ForwardOptions fo;
    fo.hooks = names.empty() ? nullptr : &hs;
    fo.return_logits = true;
    fo.return_target_nll = T > 1;
    fo.attn_query_chunk = chunk;
    auto t0 = std::chrono::steady_clock::now();
    auto r = (*model)->Forward(prompts[i], fo);
    if (!r.ok()) {
      std::cerr << "sinkscope-probe: prompt " << i << ": " << r.status() << "\n";
      return 1;
    }
    Blob logits{"F32", Shape(r->logits), FloatBytes(r->logits)};  // the copy to the host synchronises the device
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    times.push_back(ms);
    Blob ids{"I64", {T}, std::string(static_cast<size_t>(T) * 8, '\0')};
    for (int64_t t = 0; t < T; ++t) {
      const int64_t v = prompts[i][t];
      std::memcpy(&ids.bytes[static_cast<size_t>(t) * 8], &v, 8);
    }
    out.emplace_back(pre + "ids", std::move(ids));
    out.emplace_back(pre + "logits", std::move(logits));
    if (r->target_nll.defined()) out.emplace_back(pre + "target_nll", Blob{"F32", Shape(r->target_nll), FloatBytes(r->target_nll)});
    for (const std::string& n : names) {
      auto it = acts.find(n);
      if (it == acts.end()) {
        std::cerr << "sinkscope-probe: hook " << n << " was never called\n";
        return 1;
      }
      out.emplace_back(pre + n, std::move(it->second));
    }
  }

  std::map<std::string, std::string> meta = {
      {"model", model_dir},
      {"device", (*model)->device()},
      {"dtype", (*model)->dtype()},
      {"torch", sinkscope::model::TorchVersion()},
      {"n_prompts", std::to_string(prompts.size())},
      {"load_seconds", std::to_string(load_s)},
      {"forward_ms", times.dump()},
  };
  std::string err;
  if (!WriteSafetensors(out_path, out, meta, &err)) {
    std::cerr << "sinkscope-probe: " << err << "\n";
    return 1;
  }
  std::cout << nlohmann::json{{"out", out_path}, {"device", meta["device"]}, {"dtype", meta["dtype"]},
                              {"torch", meta["torch"]}, {"load_seconds", load_s}, {"forward_ms", times}}
                   .dump()
            << "\n";
  return 0;
}
