// EM routing of one capsule layer on the CPU, one image per task (robustcaps/models/routing_cpu.py).
//
// Procedure 1 (robustcaps/models/routing.py has the equations) for every image of the batch in turn, its
// votes V_ij = M_i W_ij formed once into a buffer of that image alone (2.7 MB for capsnet-small's ConvCaps1,
// which stays in cache) instead of the batch's (170 MB), and every M-step, E-step and their gradients
// computed from it. With gradients the forward keeps each iteration's parents and responsibilities (the
// state); backward forms the image's votes again and walks the iterations back (the derivation is in
// routing_cpu.py), routing the image again only when given no state.
// Layouts, per image: poses (L, I, 16), W (I, J, 16), votes and their gradient (L, J, I, 16),
// responsibilities (L, J, I), parents (L, J, 16) and (L, J).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace {

constexpr int H = 16;
constexpr double MASS_EPSILON = 1e-6;

// A vote's 16 entries as one vector (GCC vector extension): sums over children in registers.
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(H * sizeof(T))));
};
template <typename T>
using vec = typename Vec<T>::type;

template <typename T>
inline vec<T> load(const T *p) {
  vec<T> x;
  __builtin_memcpy(&x, p, sizeof(x));
  return x;
}

template <typename T>
inline void store(T *p, const vec<T> &x) {
  __builtin_memcpy(p, &x, sizeof(x));
}

template <typename T>
inline T lane_sum(const vec<T> &x) {
  T sum = 0;
  for (int h = 0; h < H; ++h) sum += x[h];
  return sum;
}

struct Shape {
  int64_t L, I, J, n_children;
  bool cross;
};

struct Settings {
  std::vector<double> lambdas;
  double min_variance, mass_scale, temperature;
};

template <typename T>
struct Layer {  // one image's inputs
  const T *poses, *tiled, *offsets, *activations, *beta_u, *beta_a;  // tiled: tile_weight's W
  const int64_t *children;
};

template <typename T>
struct Iteration {  // what one M-step leaves: the parents and what their backward needs
  std::vector<T> mean, variance, spread, mass, logit, r;  // r: the responsibilities it started from
  explicit Iteration(const Shape &s)
      : mean(s.L * s.J * H), variance(s.L * s.J * H), spread(s.L * s.J * H), mass(s.L * s.J),
        logit(s.L * s.J), r(s.L * s.J * s.I) {}
  // the forward's copy for backward, which then forms the votes but routes no more: (6 vectors packed)
  static int64_t packed_size(const Shape &s) { return s.L * s.J * (3 * H + 2 + s.I); }
  void pack(T *out) const {
    for (const auto *v : {&mean, &variance, &spread, &mass, &logit, &r}) out = std::copy(v->begin(), v->end(), out);
  }
  void unpack(const T *in) {
    for (auto *v : {&mean, &variance, &spread, &mass, &logit, &r}) {
      std::copy_n(in, v->size(), v->begin());
      in += v->size();
    }
  }
};

// W_ij laid out for 16-wide products: row k of W_ij repeated over the 4 rows of the vote, so that
// V[h] = Σ_k M[row(h), k] W[k, col(h)] is 4 element-wise multiply-adds of 16-entry vectors. (I, J, 4, 16)
template <typename T>
std::vector<T> tile_weight(const Shape &s, const T *weight) {
  std::vector<T> tiled(s.I * s.J * 4 * H);
  for (int64_t ij = 0; ij < s.I * s.J; ++ij)
    for (int k = 0; k < 4; ++k)
      for (int h = 0; h < H; ++h) tiled[(ij * 4 + k) * H + h] = weight[ij * H + k * 4 + h % 4];
  return tiled;
}

template <typename T>
void spread_pose(const T *m, T (*a)[H]) {  // a[k][h] = M[row(h), k]
  for (int k = 0; k < 4; ++k)
    for (int h = 0; h < H; ++h) a[k][h] = m[(h / 4) * 4 + k];
}

template <typename T>
void form_votes(const Shape &s, const Layer<T> &in, T *__restrict votes) {
  const T zero[H] = {};
  for (int64_t l = 0; l < s.L; ++l)
    for (int64_t i = 0; i < s.I; ++i) {
      alignas(64) T a[4][H];
      spread_pose(in.poses + (l * s.I + i) * H, a);
      const T *__restrict off = in.offsets ? in.offsets + i * H : zero;
      for (int64_t j = 0; j < s.J; ++j) {
        const T *__restrict w = in.tiled + (i * s.J + j) * 4 * H;
        T *__restrict v = votes + ((l * s.J + j) * s.I + i) * H;
#pragma omp simd
        for (int h = 0; h < H; ++h)
          v[h] = off[h] + a[0][h] * w[h] + a[1][h] * w[H + h] + a[2][h] * w[2 * H + h] + a[3][h] * w[3 * H + h];
      }
    }
}

template <typename T>
void initial_responsibilities(const Shape &s, const Layer<T> &in, T *r) {
  std::vector<T> fan(s.cross ? s.n_children : 0, T(0));
  for (int64_t k = 0; s.cross && k < s.L * s.I; ++k) fan[in.children[k]] += 1;
  for (int64_t l = 0; l < s.L; ++l)
    for (int64_t j = 0; j < s.J; ++j)
      for (int64_t i = 0; i < s.I; ++i)
        r[(l * s.J + j) * s.I + i] = T(1) / ((s.cross ? fan[in.children[l * s.I + i]] : T(1)) * s.J);
}

template <typename T>
void m_step(const Shape &s, const Settings &set, const Layer<T> &in, const T *votes, double lambda,
            Iteration<T> &it) {
  for (int64_t l = 0; l < s.L; ++l)
    for (int64_t j = 0; j < s.J; ++j) {
      const int64_t lj = l * s.J + j;
      const T *r = it.r.data() + lj * s.I, *a = in.activations + l * s.I;
      T mass = 0;
      for (int64_t i = 0; i < s.I; ++i) mass += r[i] * a[i];
      const T den = mass + T(MASS_EPSILON);
      vec<T> first = {}, second = {};
      for (int64_t i = 0; i < s.I; ++i) {
        const T share = r[i] * a[i] / den;
        const vec<T> v = load(votes + (lj * s.I + i) * H);
        first += share * v;
        second += share * v * v;
      }
      T m1[H], m2[H];
      store(m1, first);
      store(m2, second);
      const T total = mass / den;
      T log_sigma = 0;
      for (int h = 0; h < H; ++h) {
        const T spread = m2[h] - m1[h] * m1[h] * (2 - total);
        const T variance = std::max(spread, T(0)) + T(set.min_variance);
        it.mean[lj * H + h] = m1[h];
        it.spread[lj * H + h] = spread;
        it.variance[lj * H + h] = variance;
        log_sigma += std::log(variance);
      }
      const T cost = (H * in.beta_u[j] + T(0.5) * log_sigma) * mass * T(set.mass_scale);
      it.mass[lj] = mass;
      it.logit[lj] = T(lambda) * (in.beta_a[j] - cost);
    }
}

template <typename T>
T log_sigmoid(T x) {
  return std::min(x, T(0)) - std::log1p(std::exp(-std::abs(x)));
}

// log a_j + T log N(V_ij; μ_j, σ_j²), normalised over each child's parents: the next responsibilities
template <typename T>
void e_step(const Shape &s, const Settings &set, const Layer<T> &in, const T *votes, const Iteration<T> &it,
            T *r_next) {
  const T temp = T(set.temperature);
  for (int64_t lj = 0; lj < s.L * s.J; ++lj) {
    const T *mean = it.mean.data() + lj * H, *var = it.variance.data() + lj * H;
    T constant = 0;
    vec<T> half_precision;
    for (int h = 0; h < H; ++h) {
      constant += std::log(T(2 * M_PI) * var[h]);
      half_precision[h] = T(0.5) / var[h];
    }
    const vec<T> mu = load(mean);
    const T bias = log_sigmoid(it.logit[lj]) - temp * T(0.5) * constant;
    for (int64_t i = 0; i < s.I; ++i) {
      const vec<T> d = load(votes + (lj * s.I + i) * H) - mu;
      r_next[lj * s.I + i] = bias - temp * lane_sum<T>(d * d * half_precision);  // the log joint, normalised below
    }
  }
  // log-sum-exp over each normalising set: the J types at a slot, then (cross) every slot of a child
  const int64_t groups = s.cross ? s.n_children : s.L * s.I;
  std::vector<T> peak(groups, -INFINITY), total(groups, T(0));
  auto group = [&](int64_t l, int64_t i) { return s.cross ? in.children[l * s.I + i] : l * s.I + i; };
  for (int64_t l = 0; l < s.L; ++l)
    for (int64_t j = 0; j < s.J; ++j)
      for (int64_t i = 0; i < s.I; ++i) {
        T &p = peak[group(l, i)];
        p = std::max(p, r_next[(l * s.J + j) * s.I + i]);
      }
  for (int64_t l = 0; l < s.L; ++l)
    for (int64_t j = 0; j < s.J; ++j)
      for (int64_t i = 0; i < s.I; ++i) {
        const int64_t g = group(l, i);
        T &x = r_next[(l * s.J + j) * s.I + i];
        x = std::exp(x - peak[g]);
        total[g] += x;
      }
  for (int64_t g = 0; g < groups; ++g) total[g] = T(1) / total[g];
  for (int64_t l = 0; l < s.L; ++l)
    for (int64_t j = 0; j < s.J; ++j)
      for (int64_t i = 0; i < s.I; ++i) r_next[(l * s.J + j) * s.I + i] *= total[group(l, i)];
}

// Every iteration of one image; `its` holds each M-step's parents, the last one's are the outputs.
template <typename T>
void route(const Shape &s, const Settings &set, const Layer<T> &in, const T *votes,
           std::vector<Iteration<T>> &its) {
  initial_responsibilities(s, in, its[0].r.data());
  for (size_t t = 0; t < its.size(); ++t) {
    m_step(s, set, in, votes, set.lambdas[t], its[t]);
    if (t + 1 < its.size()) e_step(s, set, in, votes, its[t], its[t + 1].r.data());
  }
}

struct Grads {  // gradients w.r.t. one image's parents of one iteration: μ, σ², logit
  std::vector<double> mean, variance, logit;
  explicit Grads(const Shape &s) : mean(s.L * s.J * H), variance(s.L * s.J * H), logit(s.L * s.J) {}
  void zero() {
    std::fill(mean.begin(), mean.end(), 0.0);
    std::fill(variance.begin(), variance.end(), 0.0);
    std::fill(logit.begin(), logit.end(), 0.0);
  }
};

// Backward of one M-step: parents' gradients → the responsibilities' (g_r), the votes', a's and β's.
template <typename T>
void m_step_backward(const Shape &s, const Settings &set, const Layer<T> &in, const T *votes, double lambda,
                     const Iteration<T> &it, const Grads &g, T *g_r, T *g_votes, T *g_act, T *g_beta_u,
                     T *g_beta_a) {
  for (int64_t l = 0; l < s.L; ++l)
    for (int64_t j = 0; j < s.J; ++j) {
      const int64_t lj = l * s.J + j;
      const T *r = it.r.data() + lj * s.I, *a = in.activations + l * s.I;
      const T *mean = it.mean.data() + lj * H, *var = it.variance.data() + lj * H;
      const T mass = it.mass[lj], den = mass + T(MASS_EPSILON), total = mass / den;
      const T g_cost = -T(lambda) * T(g.logit[lj]);
      g_beta_a[j] += T(lambda) * T(g.logit[lj]);
      g_beta_u[j] += H * g_cost * mass * T(set.mass_scale);
      T log_sigma = 0;
      for (int h = 0; h < H; ++h) log_sigma += std::log(var[h]);
      const T g_log_sigma = g_cost * mass * T(set.mass_scale);  // of Σ_h log σ_h = ½ Σ_h log σ²_h
      T g_mass = g_cost * (H * in.beta_u[j] + T(0.5) * log_sigma) * T(set.mass_scale);
      vec<T> g1, g2;
      T g_total = 0;
      for (int h = 0; h < H; ++h) {
        const T g_var = T(g.variance[lj * H + h]) + g_log_sigma * T(0.5) / var[h];
        const T g_spread = it.spread[lj * H + h] >= 0 ? g_var : T(0);
        g2[h] = g_spread;
        g1[h] = T(g.mean[lj * H + h]) - 2 * mean[h] * (2 - total) * g_spread;
        g_total += g_spread * mean[h] * mean[h];
      }
      T g_share_dot = 0;  // Σ_i g_share_i share_i
      T *gr = g_r + lj * s.I;
      for (int64_t i = 0; i < s.I; ++i) {
        const T share = r[i] * a[i] / den;
        const vec<T> v = load(votes + (lj * s.I + i) * H);
        T *gv = g_votes + (lj * s.I + i) * H;
        const T g_share = lane_sum<T>((g1 + g2 * v) * v);
        store(gv, load(gv) + share * (g1 + 2 * g2 * v));
        gr[i] = g_share / den;  // completed below
        g_share_dot += g_share * share;
      }
      const T g_den = -(g_share_dot + g_total * total) / den;
      const T g_mass_all = g_mass + g_total / den + g_den;
      for (int64_t i = 0; i < s.I; ++i) {
        const T g_weighted = gr[i] + g_mass_all;  // of R'_ij = R_ij a_i
        gr[i] = g_weighted * a[i];
        g_act[l * s.I + i] += g_weighted * r[i];
      }
    }
}

// Backward of one E-step: the gradient of the responsibilities it made (g_r, overwritten) → the parents'
// gradients of the iteration before (g, zeroed first) and the votes'.
template <typename T>
void e_step_backward(const Shape &s, const Settings &set, const Layer<T> &in, const T *votes,
                     const Iteration<T> &it, const T *r_next, T *g_r, Grads &g, T *g_votes) {
  const int64_t groups = s.cross ? s.n_children : s.L * s.I;
  std::vector<T> sum(groups, T(0));
  auto group = [&](int64_t l, int64_t i) { return s.cross ? in.children[l * s.I + i] : l * s.I + i; };
  for (int64_t l = 0; l < s.L; ++l)
    for (int64_t j = 0; j < s.J; ++j)
      for (int64_t i = 0; i < s.I; ++i) {
        const int64_t k = (l * s.J + j) * s.I + i;
        g_r[k] *= r_next[k];  // now the gradient of log R
        sum[group(l, i)] += g_r[k];
      }
  g.zero();
  const T temp = T(set.temperature);
  for (int64_t l = 0; l < s.L; ++l)
    for (int64_t j = 0; j < s.J; ++j) {
      const int64_t lj = l * s.J + j;
      const T *mean = it.mean.data() + lj * H, *var = it.variance.data() + lj * H;
      T g_joint_sum = 0;
      vec<T> g_mean = {}, g_var = {}, precision;
      for (int h = 0; h < H; ++h) precision[h] = T(1) / var[h];
      const vec<T> mu = load(mean);
      for (int64_t i = 0; i < s.I; ++i) {
        const int64_t k = lj * s.I + i;
        const T g_joint = g_r[k] - r_next[k] * sum[group(l, i)];  // softmax backward
        g_joint_sum += g_joint;
        const T g_distance = -temp * g_joint;
        const vec<T> scaled = (load(votes + k * H) - mu) * precision, step = g_distance * scaled;
        store(g_votes + k * H, load(g_votes + k * H) + step);
        g_mean -= step;
        g_var -= T(0.5) * step * scaled;
      }
      g.logit[lj] = double(g_joint_sum / (T(1) + std::exp(it.logit[lj])));  // logsigmoid' = σ(−x)
      const T g_constant = -temp * g_joint_sum;  // of ½ Σ_h log 2πσ²_h
      for (int h = 0; h < H; ++h) {
        g.mean[lj * H + h] = double(g_mean[h]);
        g.variance[lj * H + h] = double(g_var[h] + g_constant * T(0.5) * precision[h]);
      }
    }
}

// V_ij = M_i W_ij (+ offsets): the votes' gradient to the poses (written) and W (written, this image's).
template <typename T>
void votes_backward(const Shape &s, const Layer<T> &in, const T *__restrict g_votes, T *g_poses,
                    std::vector<T> &g_tiled, T *g_weight) {
  std::fill(g_tiled.begin(), g_tiled.end(), T(0));
  for (int64_t l = 0; l < s.L; ++l)
    for (int64_t i = 0; i < s.I; ++i) {
      alignas(64) T a[4][H], p[4][H] = {};
      spread_pose(in.poses + (l * s.I + i) * H, a);
      for (int64_t j = 0; j < s.J; ++j) {
        const T *__restrict w = in.tiled + (i * s.J + j) * 4 * H;
        const T *__restrict gv = g_votes + ((l * s.J + j) * s.I + i) * H;
        T *__restrict gw = g_tiled.data() + (i * s.J + j) * 4 * H;
        for (int k = 0; k < 4; ++k)
#pragma omp simd
          for (int h = 0; h < H; ++h) {
            p[k][h] += gv[h] * w[k * H + h];
            gw[k * H + h] += a[k][h] * gv[h];
          }
      }
      for (int r = 0; r < 4; ++r)
        for (int k = 0; k < 4; ++k)
          g_poses[(l * s.I + i) * H + r * 4 + k] = p[k][r * 4] + p[k][r * 4 + 1] + p[k][r * 4 + 2] + p[k][r * 4 + 3];
    }
  for (int64_t ij = 0; ij < s.I * s.J; ++ij)  // g_W[k, c] = Σ_r over the tiled rows
    for (int k = 0; k < 4; ++k)
      for (int c = 0; c < 4; ++c) {
        const T *gw = g_tiled.data() + (ij * 4 + k) * H;
        g_weight[ij * H + k * 4 + c] = gw[c] + gw[4 + c] + gw[8 + c] + gw[12 + c];
      }
}

template <typename T>
Layer<T> image(const Shape &s, int64_t n, const torch::Tensor &poses, const T *tiled,
               const torch::Tensor &offsets, const torch::Tensor &activations, const torch::Tensor &beta_u,
               const torch::Tensor &beta_a, const torch::Tensor &children) {
  return Layer<T>{poses.data_ptr<T>() + n * s.L * s.I * H,
                  tiled,
                  offsets.numel() ? offsets.data_ptr<T>() : nullptr,
                  activations.data_ptr<T>() + n * s.L * s.I,
                  beta_u.data_ptr<T>(),
                  beta_a.data_ptr<T>(),
                  s.cross ? children.data_ptr<int64_t>() : nullptr};
}

Shape shape_of(const torch::Tensor &poses, const torch::Tensor &weight, const torch::Tensor &children,
               int64_t n_children) {
  TORCH_CHECK(poses.dim() == 4 && poses.size(3) == H && poses.is_contiguous(), "poses: (N, L, I, 16)");
  TORCH_CHECK(weight.dim() == 3 && weight.size(0) == poses.size(2) && weight.is_contiguous(), "W: (I, J, 16)");
  return Shape{poses.size(1), poses.size(2), weight.size(1), n_children, children.numel() > 0};
}

struct Inputs {  // the layer's tensors, as the operators receive them
  torch::Tensor poses, weight, offsets, activations, beta_u, beta_a, children;
};

template <typename T>
void forward_images(const Shape &s, const Settings &set, const Inputs &x, T *mean, T *variance, T *logit,
                    T *state) {
  const int64_t N = x.poses.size(0), P = s.L * s.J;
  const std::vector<T> tiled = tile_weight(s, x.weight.data_ptr<T>());
#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<T> votes(P * s.I * H);
    std::vector<Iteration<T>> its(set.lambdas.size(), Iteration<T>(s));
#pragma omp for schedule(dynamic, 1)  // image by image: a thread slowed by other processes takes fewer
    for (int64_t n = 0; n < N; ++n) {
      const auto in = image<T>(s, n, x.poses, tiled.data(), x.offsets, x.activations, x.beta_u, x.beta_a, x.children);
      form_votes(s, in, votes.data());
      route(s, set, in, votes.data(), its);
      const int64_t packed = Iteration<T>::packed_size(s), iterations = its.size();
      for (int64_t t = 0; state && t < iterations; ++t) its[t].pack(state + (n * iterations + t) * packed);
      const auto &last = its.back();
      std::copy(last.mean.begin(), last.mean.end(), mean + n * P * H);
      std::copy(last.variance.begin(), last.variance.end(), variance + n * P * H);
      std::copy(last.logit.begin(), last.logit.end(), logit + n * P);
    }
  }
}

struct Gradients {  // what backward receives (g_*: float64) and returns (per image where summed later)
  torch::Tensor g_mean, g_variance, g_logit, g_poses, g_weight, g_act, g_beta_u, g_beta_a, state;
};

template <typename T>
void backward_images(const Shape &s, const Settings &set, const Inputs &x, Gradients &o) {
  const int64_t N = x.poses.size(0), P = s.L * s.J, iterations = set.lambdas.size();
  const std::vector<T> tiled = tile_weight(s, x.weight.data_ptr<T>());
#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<T> votes(P * s.I * H), g_votes(votes.size()), g_r(P * s.I), g_tiled(tiled.size());
    std::vector<Iteration<T>> its(iterations, Iteration<T>(s));
    Grads g(s);
#pragma omp for schedule(dynamic, 1)
    for (int64_t n = 0; n < N; ++n) {
      const auto in = image<T>(s, n, x.poses, tiled.data(), x.offsets, x.activations, x.beta_u, x.beta_a, x.children);
      form_votes(s, in, votes.data());
      const int64_t packed = Iteration<T>::packed_size(s);
      if (o.state.numel())
        for (int64_t t = 0; t < iterations; ++t) its[t].unpack(o.state.data_ptr<T>() + (n * iterations + t) * packed);
      else
        route(s, set, in, votes.data(), its);
      std::copy_n(o.g_mean.data_ptr<double>() + n * P * H, P * H, g.mean.begin());
      std::copy_n(o.g_variance.data_ptr<double>() + n * P * H, P * H, g.variance.begin());
      std::copy_n(o.g_logit.data_ptr<double>() + n * P, P, g.logit.begin());
      std::fill(g_votes.begin(), g_votes.end(), T(0));
      T *ga = o.g_act.data_ptr<T>() + n * s.L * s.I;
      T *gbu = o.g_beta_u.data_ptr<T>() + n * s.J, *gba = o.g_beta_a.data_ptr<T>() + n * s.J;
      for (int64_t t = iterations - 1; t >= 0; --t) {
        m_step_backward(s, set, in, votes.data(), set.lambdas[t], its[t], g, g_r.data(), g_votes.data(), ga, gbu,
                        gba);
        if (t > 0)
          e_step_backward(s, set, in, votes.data(), its[t - 1], its[t].r.data(), g_r.data(), g, g_votes.data());
      }
      votes_backward(s, in, g_votes.data(), o.g_poses.data_ptr<T>() + n * s.L * s.I * H, g_tiled,
                     o.g_weight.data_ptr<T>() + n * s.I * s.J * H);
    }
  }
}

}  // namespace

std::vector<torch::Tensor> em_forward(torch::Tensor poses, torch::Tensor weight, torch::Tensor offsets,
                                      torch::Tensor activations, torch::Tensor beta_u, torch::Tensor beta_a,
                                      std::vector<double> lambdas, torch::Tensor children, int64_t n_children,
                                      double min_variance, double mass_scale, double temperature,
                                      bool keep_state) {
  const Shape s = shape_of(poses, weight, children, n_children);
  const Settings set{lambdas, min_variance, mass_scale, temperature};
  const Inputs x{poses, weight, offsets, activations, beta_u, beta_a, children};
  const int64_t N = poses.size(0);
  auto mean = torch::empty({N, s.L, s.J, H}, poses.options());
  auto variance = torch::empty_like(mean), logit = torch::empty({N, s.L, s.J}, poses.options());
  const int64_t iterations = lambdas.size(), packed = keep_state ? Iteration<float>::packed_size(s) : 0;
  auto state = torch::empty({keep_state ? N : 0, iterations, packed}, poses.options());
  AT_DISPATCH_FLOATING_TYPES(poses.scalar_type(), "em_forward", [&] {
    forward_images<scalar_t>(s, set, x, mean.data_ptr<scalar_t>(), variance.data_ptr<scalar_t>(),
                             logit.data_ptr<scalar_t>(), keep_state ? state.data_ptr<scalar_t>() : nullptr);
  });
  return {mean, variance, logit, state};
}

// Gradients w.r.t. poses, W, activations, β_u, β_a; W's and the β's per image, summed here (no
// accumulator shared between threads: deterministic).
std::vector<torch::Tensor> em_backward(torch::Tensor poses, torch::Tensor weight, torch::Tensor offsets,
                                       torch::Tensor activations, torch::Tensor beta_u, torch::Tensor beta_a,
                                       std::vector<double> lambdas, torch::Tensor children, int64_t n_children,
                                       double min_variance, double mass_scale, double temperature,
                                       torch::Tensor g_mean, torch::Tensor g_variance, torch::Tensor g_logit,
                                       torch::Tensor state) {
  const Shape s = shape_of(poses, weight, children, n_children);
  const Settings set{lambdas, min_variance, mass_scale, temperature};
  const Inputs x{poses, weight, offsets, activations, beta_u, beta_a, children};
  const int64_t N = poses.size(0);
  const auto as_double = [](const torch::Tensor &t) { return t.contiguous().to(torch::kDouble); };
  Gradients o{as_double(g_mean), as_double(g_variance), as_double(g_logit), torch::empty_like(poses),
              torch::zeros({N, s.I, s.J, H}, poses.options()), torch::zeros_like(activations),
              torch::zeros({N, s.J}, poses.options()), torch::zeros({N, s.J}, poses.options()),
              state.contiguous()};
  AT_DISPATCH_FLOATING_TYPES(poses.scalar_type(), "em_backward", [&] { backward_images<scalar_t>(s, set, x, o); });
  return {o.g_poses, o.g_weight.sum(0), o.g_act, o.g_beta_u.sum(0), o.g_beta_a.sum(0)};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &em_forward, "EM routing of one layer, forward");
  m.def("backward", &em_backward, "EM routing of one layer, backward");
}
