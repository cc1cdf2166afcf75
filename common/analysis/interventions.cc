// Interventions; definitions in interventions.h. Compiled through analyses_unity.cc.
#include "common/analysis/interventions.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <map>
#include <memory>

#include "common/analysis/massive_values.h"

namespace sinkscope::analysis {
namespace interventions_internal {

at::Tensor IndexTensor(const std::vector<int64_t>& idx) {
  return at::tensor(idx, at::TensorOptions().dtype(at::kLong));
}

std::vector<int64_t> ToIndices(const at::Tensor& flat_mask) {
  at::Tensor nz = flat_mask.nonzero().flatten().cpu().contiguous();
  const int64_t* p = nz.data_ptr<int64_t>();
  return std::vector<int64_t>(p, p + nz.numel());
}

// A host tensor and its copy on the device the hook last saw: a host-to-device copy on every call (every prompt of
// a packed forward, every layer) would be a stream synchronisation each time on a GPU.
class OnDevice {
 public:
  explicit OnDevice(at::Tensor host) : host_(std::move(host)) {}
  const at::Tensor& On(const at::Device& d) {
    if (!copy_.defined() || copy_.device() != d) copy_ = host_.to(d);
    return copy_;
  }

 private:
  at::Tensor host_, copy_;
};

// Replaces the flat dims `idx` (of the [T, heads·hd] view) by 0 or by their mean over positions.
model::InterveneFn DimEdit(std::vector<int64_t> idx, job::Replacement replacement) {
  auto index = std::make_shared<OnDevice>(IndexTensor(idx));
  return [index, replacement](const model::HookPoint&, const at::Tensor& x) {
    const int64_t T = x.size(0);
    const at::Tensor& id = index->On(x.device());
    at::Tensor y = x.reshape({T, -1}).clone();
    if (replacement == job::Replacement::kZero) {
      y.index_fill_(1, id, 0);
    } else {
      at::Tensor m = y.index_select(1, id).to(at::kFloat).mean(0, /*keepdim=*/true).to(y.scalar_type());
      y.index_copy_(1, id, m.expand({T, id.numel()}).contiguous());
    }
    return y.view(x.sizes());
  };
}

}  // namespace interventions_internal

void AddBosMlpAblation(int64_t layer, model::HookSet* hooks) {
  hooks->Intervene(model::HookName(layer, model::HookId::kMlpOut), [](const model::HookPoint&, const at::Tensor& x) {
    at::Tensor y = x.clone();
    y.select(0, 0).zero_();
    return y;
  });
}

int64_t QkMasks::count(bool use_q, bool use_k) const {
  int64_t n = 0;
  for (size_t l = 0; l < q.size(); ++l) n += (use_q ? q[l].size() : 0) + (use_k ? k[l].size() : 0);
  return n;
}

int64_t QkMasks::num_layers(bool use_q, bool use_k) const {
  int64_t n = 0;
  for (size_t l = 0; l < q.size(); ++l) n += ((use_q && !q[l].empty()) || (use_k && !k[l].empty())) ? 1 : 0;
  return n;
}

QkIdentifier::QkIdentifier(const ModelDims& dims) : dims_(dims), q_sum_(dims.n_layers), k_sum_(dims.n_layers) {}

void QkIdentifier::Register(model::HookSet* hooks) {
  for (int64_t l = 0; l < dims_.n_layers; ++l)
    for (bool k : {false, true})
      hooks->Observe(model::HookName(l, k ? model::HookId::kK : model::HookId::kQ),
                     [this, l, k](const model::HookPoint&, const at::Tensor& x) { Add(l, k, NormMatrix(x)); });
}

void QkIdentifier::Add(int64_t layer, bool k, const at::Tensor& N) {
  at::Tensor& sum = (k ? k_sum_ : q_sum_)[layer];
  sum = sum.defined() ? sum + N : N;  // summed on the device: no wait for the GPU per prompt
  if (layer == 0 && !k) ++n_prompts_;
}

at::Tensor QkIdentifier::MeanNorms(int64_t layer, bool use_k) const {
  const at::Tensor& s = use_k ? k_sum_[layer] : q_sum_[layer];
  return s.defined() ? s.cpu() / static_cast<double>(n_prompts_) : s;
}

QkMasks QkIdentifier::Masks(double lambda, job::ThresholdScope scope) const {
  QkMasks m;
  m.q.resize(dims_.n_layers);
  m.k.resize(dims_.n_layers);
  if (n_prompts_ == 0) return m;
  for (int64_t l = 0; l < dims_.n_layers; ++l) {
    if (q_sum_[l].defined())
      m.q[l] = interventions_internal::ToIndices(MassiveMask(MeanNorms(l, false), lambda, scope).flatten());
    if (k_sum_[l].defined())
      m.k[l] = interventions_internal::ToIndices(MassiveMask(MeanNorms(l, true), lambda, scope).flatten());
    if (!m.q[l].empty() || !m.k[l].empty()) m.kept_layers.push_back(l);
  }
  return m;
}

bool QkIdentifier::SelectsInLayer(int64_t l, double lambda, job::ThresholdScope scope, bool use_q,
                                  bool use_k) const {
  if (n_prompts_ == 0) return false;
  auto any = [&](bool k) {
    const at::Tensor& s = k ? k_sum_[l] : q_sum_[l];
    return s.defined() && MassiveMask(MeanNorms(l, k), lambda, scope).any().item<bool>();
  };
  return (use_q && any(false)) || (use_k && any(true));
}

QkMasks RandomControlMasks(const QkMasks& m, const ModelDims& dims, uint64_t seed) {
  // torch.manual_seed(seed) re-seeds the default CPU generator exactly like constructing one with `seed`.
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  QkMasks r;
  r.q.resize(m.q.size());
  r.k.resize(m.k.size());
  r.kept_layers = m.kept_layers;
  for (int64_t l : m.kept_layers) {
    for (int key = 0; key < 2; ++key) {
      const std::vector<int64_t>& src = key == 0 ? m.q[l] : m.k[l];
      const int64_t F = (key == 0 ? dims.n_heads : dims.n_kv_heads) * dims.head_dim;
      at::Tensor perm = at::randperm(F, gen, at::TensorOptions().dtype(at::kLong));
      const int64_t* p = perm.data_ptr<int64_t>();
      std::vector<int64_t> idx(p, p + static_cast<int64_t>(src.size()));
      std::sort(idx.begin(), idx.end());
      (key == 0 ? r.q[l] : r.k[l]) = std::move(idx);
    }
  }
  return r;
}

void AddQkDisruption(const QkMasks& m, job::Replacement replacement, bool use_q, bool use_k, model::HookSet* hooks) {
  for (size_t l = 0; l < m.q.size(); ++l) {
    if (use_q && !m.q[l].empty())
      hooks->Intervene(model::HookName(l, model::HookId::kQ), interventions_internal::DimEdit(m.q[l], replacement));
    if (use_k && !m.k[l].empty())
      hooks->Intervene(model::HookName(l, model::HookId::kK), interventions_internal::DimEdit(m.k[l], replacement));
  }
}

void AddTopPerHead(const job::TopPerHeadMeanReplacement& spec, const ModelDims& dims, model::HookSet* hooks) {
  auto fn = [spec](const model::HookPoint&, const at::Tensor& x) {
    // x [T, heads, hd]
    at::Tensor xf = x.to(at::kFloat);
    at::Tensor norms = xf.pow(2).sum(0).sqrt();  // [heads, hd]
    const int64_t k = std::min<int64_t>(std::max(spec.k, 1), norms.size(1));
    at::Tensor idx = std::get<1>(norms.topk(k, /*dim=*/1, /*largest=*/!spec.smallest));
    at::Tensor sel = at::zeros_like(norms, at::TensorOptions().dtype(at::kBool)).scatter_(1, idx, true);
    if (spec.lambda) sel = sel.logical_and(norms > norms.mean(1, /*keepdim=*/true) * *spec.lambda);
    at::Tensor means = xf.mean(0, /*keepdim=*/true).to(x.scalar_type());  // [1, heads, hd]
    return at::where(sel.unsqueeze(0), means, x);
  };
  for (int64_t l = 0; l < dims.n_layers; ++l) {
    hooks->Intervene(model::HookName(l, spec.post_rotary ? model::HookId::kRotQ : model::HookId::kQ), fn);
    hooks->Intervene(model::HookName(l, spec.post_rotary ? model::HookId::kRotK : model::HookId::kK), fn);
  }
}

void AddHeadAblation(const job::HeadAblation& spec, const ModelDims& dims, model::HookSet* hooks) {
  std::map<int32_t, std::vector<int64_t>> by_layer;
  for (const auto& h : spec.heads) by_layer[h.layer].push_back(h.head);
  for (const auto& [layer, heads] : by_layer) {
    std::vector<uint8_t> m(dims.n_heads, 0);
    for (int64_t h : heads) m[h] = 1;
    auto mask = std::make_shared<interventions_internal::OnDevice>(
        at::tensor(std::vector<int64_t>(m.begin(), m.end()), at::TensorOptions().dtype(at::kLong))
            .to(at::kBool)
            .view({1, -1, 1}));
    const job::Replacement r = spec.replacement;
    hooks->Intervene(model::HookName(layer, model::HookId::kZ), [mask, r](const model::HookPoint&, const at::Tensor& z) {
      const at::Tensor& mk = mask->On(z.device());
      if (r == job::Replacement::kZero) return z.masked_fill(mk, 0);
      at::Tensor means = z.to(at::kFloat).mean(0, /*keepdim=*/true).to(z.scalar_type());
      return at::where(mk, means, z);
    });
  }
}

void AddActivationEdits(const std::vector<job::ActivationEdit>& edits, const ModelDims& dims, model::HookSet* hooks) {
  for (const job::ActivationEdit& e : edits) {
    // Edits are validated (job/validate.cc): the name parses and has a feature axis.
    const bool per_head = model::ParseHookName(e.hook, dims.n_layers)->per_head();
    hooks->Intervene(e.hook, [e, per_head](const model::HookPoint&, const at::Tensor& x) {
      const int64_t T = x.size(0);
      auto bools = at::TensorOptions().dtype(at::kBool).device(x.device());
      // Position mask [T].
      at::Tensor pos;
      if (e.positions.empty()) {
        pos = at::ones({T}, bools);
      } else {
        std::vector<int64_t> sel;
        for (int32_t p : e.positions) {
          const int64_t i = p < 0 ? T + p : p;
          if (i >= 0 && i < T) sel.push_back(i);
        }
        if (sel.empty()) return x;  // none of the positions exists in this prompt
        pos = at::zeros({T}, bools).index_fill_(0, interventions_internal::IndexTensor(sel).to(x.device()), true);
      }
      const int64_t D = x.size(-1);
      at::Tensor dim = at::ones({D}, bools);
      if (!e.dims.empty())
        dim = at::zeros({D}, bools)
                  .index_fill_(0,
                               interventions_internal::IndexTensor(std::vector<int64_t>(e.dims.begin(), e.dims.end()))
                                   .to(x.device()),
                               true);
      at::Tensor mask;
      if (per_head) {
        const int64_t H = x.size(1);
        at::Tensor head = at::ones({H}, bools);
        if (!e.heads.empty())
          head =
              at::zeros({H}, bools)
                  .index_fill_(0,
                               interventions_internal::IndexTensor(std::vector<int64_t>(e.heads.begin(), e.heads.end()))
                                   .to(x.device()),
                               true);
        mask = pos.view({T, 1, 1}).logical_and(head.view({1, H, 1})).logical_and(dim.view({1, 1, D}));
      } else {
        mask = pos.view({T, 1}).logical_and(dim.view({1, D}));
      }
      mask = mask.expand(x.sizes());
      switch (e.op) {
        case job::EditOp::kZero:
          return x.masked_fill(mask, 0);
        case job::EditOp::kSet:
          return x.masked_fill(mask, e.value);
        case job::EditOp::kScale:
          return at::where(mask, x * e.value, x);
        case job::EditOp::kAdd:
          return at::where(mask, x + e.value, x);
        case job::EditOp::kMean:
          return at::where(mask, x.to(at::kFloat).mean(0, /*keepdim=*/true).to(x.scalar_type()).expand(x.sizes()), x);
      }
      return x;
    });
  }
}

}  // namespace sinkscope::analysis
