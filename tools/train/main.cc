// sinkscope-train: trains the tiny RoPE Llama (and, with --init-from --attention nope, its DroPE copy) and exports
// it as a Hugging Face snapshot. See tools/train/README.md.
#include <CLI/CLI.hpp>
#include <iostream>

#include "tools/train/trainer.h"

int main(int argc, char** argv) {
  sinkscope::train::TrainOptions o;
  CLI::App app{"sinkscope-train: train a tiny Llama (RoPE) or recalibrate its DroPE copy on CPU, export HF layout"};
  app.option_defaults()->always_capture_default();
  app.add_option("--layers", o.layers, "decoder layers");
  app.add_option("--hidden", o.hidden, "hidden size d");
  app.add_option("--heads", o.heads, "attention heads (head_dim = hidden / heads)");
  app.add_option("--kv-heads", o.kv_heads, "key/value heads (0: = heads, MHA)");
  app.add_option("--intermediate", o.intermediate, "SwiGLU width (0: 8d/3 rounded up to a multiple of 8)");
  app.add_option("--rope-theta", o.rope_theta, "rotary base");
  app.add_option("--init-std", o.init_std, "init std of embeddings/projections (o_proj, down_proj: std/sqrt(2L))");
  app.add_option("--attention", o.attention, "rope (model_type llama) | nope (llama_drope, attention_type nope)")
      ->check(CLI::IsMember({"rope", "nope"}));
  app.add_option("--train-text", o.train_text, "training text (one paragraph per line, blank line between documents)");
  app.add_option("--heldout-text", o.heldout_text, "held-out text, same format");
  app.add_option("--tokenizer", o.tokenizer_dir, "directory with tokenizer.model (+ HF tokenizer json files)");
  app.add_option("--cache-dir", o.cache_dir, "where token id caches are kept");
  app.add_option("--seq-len", o.seq_len, "tokens per training sequence, BOS included (= max_position_embeddings)");
  app.add_option("--batch", o.batch, "sequences per step");
  app.add_option("--steps", o.steps, "total optimisation steps of this stage");
  app.add_option("--lr", o.lr, "peak learning rate");
  app.add_option("--min-lr-ratio", o.min_lr_ratio, "final lr = lr * ratio (cosine)");
  app.add_option("--warmup", o.warmup, "linear warm-up steps");
  app.add_option("--weight-decay", o.weight_decay, "AdamW decoupled weight decay (not on RMSNorm weights)");
  app.add_option("--beta1", o.beta1, "AdamW beta1");
  app.add_option("--beta2", o.beta2, "AdamW beta2");
  app.add_option("--grad-clip", o.grad_clip, "global grad-norm clip (0: off)");
  app.add_option("--seed", o.seed, "seed of the init and of the batch sampler");
  app.add_option("--threads", o.threads, "LibTorch intra-op (and OpenBLAS) threads");
  app.add_option("--compute-dtype", o.compute_dtype, "float32 | bfloat16 (fp32 master weights either way)")
      ->check(CLI::IsMember({"float32", "bfloat16"}));
  app.add_option("--name", o.name, "run name (training.json; default run dir build/train/<name>)");
  app.add_option("--run-dir", o.run_dir, "checkpoint + CSV directory");
  app.add_flag("--resume", o.resume, "continue from <run-dir>/checkpoint if present");
  app.add_option("--init-from", o.init_from, "start from this checkpoint dir or HF snapshot (fresh optimiser)");
  app.add_option("--log-every", o.log_every, "stdout log interval (steps)");
  app.add_option("--eval-every", o.eval_every, "held-out loss interval (steps; 0: only at the end)");
  app.add_option("--eval-windows", o.eval_windows, "held-out windows per evaluation");
  app.add_option("--ckpt-every", o.ckpt_every, "checkpoint interval (steps; 0: only at the end)");
  app.add_option("--heldout-max-lines", o.heldout_max_lines, "held-out lines scored at export (0: all)");
  app.add_option("--out", o.out, "export a HF snapshot here after training");
  app.add_option("--shards", o.shards, "safetensors shards of the export");
  app.add_option("--export-dtype", o.export_dtype, "float32 | bfloat16")->check(CLI::IsMember({"float32", "bfloat16"}));
  CLI11_PARSE(app, argc, argv);

  absl::Status s = sinkscope::train::RunTraining(o);
  if (!s.ok()) {
    std::cerr << "sinkscope-train: " << s << "\n";
    return 1;
  }
  return 0;
}
