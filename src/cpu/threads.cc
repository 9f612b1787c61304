// Thread pool for the CPU kernels (see threads.h).
#include "threads.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace needle {
namespace cpu {

namespace {

// One parallel_for call. Workers hold it by shared_ptr, so a worker that wakes
// after the call returned still reads a live (and exhausted) counter.
struct Job {
  const std::function<void(int64_t)>* fn = nullptr;
  int64_t n = 0;
  int max_workers = 0;                // workers allowed to join (threads - 1)
  std::atomic<int> joined{0};
  std::atomic<int64_t> next{0};       // next index to claim
  std::atomic<int64_t> done{0};       // indices finished
  std::mutex mu;
  std::condition_variable finished;
  std::exception_ptr error;
};

thread_local bool tls_in_parallel = false;

constexpr int kDefaultSpinUs = 100;

int spin_us_from_env() {
  const char* env = std::getenv("NEEDLE_SPIN_US");
  if (!env || !*env) return kDefaultSpinUs;
  char* end = nullptr;
  const long v = std::strtol(env, &end, 10);
  if (*end != '\0' || v < 0) return kDefaultSpinUs;
  return int(std::min<long>(v, 1000000));
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Polls ready() for up to us microseconds, pausing between polls; with
// yield_core, also yields the core every few microseconds to any other
// runnable thread on it (another process's, say). Returns ready()'s last value.
template <class Ready>
bool spin_until(Ready ready, int us, bool yield_core) {
  if (ready()) return true;
  if (us <= 0) return false;
  using clock = std::chrono::steady_clock;
  const auto deadline = clock::now() + std::chrono::microseconds(us);
  for (;;) {
    for (int i = 0; i < 32; ++i) {
      cpu_relax();
      if (ready()) return true;
    }
    if (clock::now() >= deadline) return ready();
    if (yield_core) std::this_thread::yield();
  }
}

void run_indices(Job& job) {
  const bool was = tls_in_parallel;
  tls_in_parallel = true;
  for (;;) {
    const int64_t i = job.next.fetch_add(1, std::memory_order_relaxed);
    if (i >= job.n) break;
    try {
      (*job.fn)(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(job.mu);
      if (!job.error) job.error = std::current_exception();
    }
    if (job.done.fetch_add(1, std::memory_order_acq_rel) + 1 == job.n) {
      std::lock_guard<std::mutex> lock(job.mu);
      job.finished.notify_all();
    }
  }
  tls_in_parallel = was;
}

class Pool {
 public:
  static Pool& get() {
    // Leaked on purpose: worker threads must not be joined from a static
    // destructor at interpreter exit.
    static Pool* pool = new Pool();
    return *pool;
  }

  int threads() const { return threads_.load(std::memory_order_relaxed); }
  void set_threads(int n) { threads_.store(std::max(1, n), std::memory_order_relaxed); }
  int spin_us() const { return spin_us_.load(std::memory_order_relaxed); }
  void set_spin_us(int us) { spin_us_.store(std::max(0, us), std::memory_order_relaxed); }

  void run(int64_t n, const std::function<void(int64_t)>& fn, int max_threads) {
    const int nt = int(std::min<int64_t>({int64_t(threads()), int64_t(max_threads), n}));
    if (nt <= 1 || tls_in_parallel) {
      for (int64_t i = 0; i < n; ++i) fn(i);
      return;
    }
    // One job at a time (calls from several host threads take turns).
    std::unique_lock<std::mutex> call_lock(call_mu_, std::try_to_lock);
    if (!call_lock.owns_lock()) {
      for (int64_t i = 0; i < n; ++i) fn(i);
      return;
    }
    auto job = std::make_shared<Job>();
    job->fn = &fn;
    job->n = n;
    job->max_workers = nt - 1;
    bool sleeping;
    {
      std::lock_guard<std::mutex> lock(mu_);
      grow(nt - 1);
      job_ = job;
      generation_.fetch_add(1, std::memory_order_release);
      sleeping = sleepers_ > 0;
    }
    // Workers still polling (see worker_loop) pick the job up without a wake.
    if (sleeping) wake_.notify_all();
    run_indices(*job);
    const auto all_done = [&] { return job->done.load(std::memory_order_acquire) >= job->n; };
    // No yielding here: a yielded core can stay with another process for a
    // whole time slice, while a thread that blocks is woken promptly.
    if (!spin_until(all_done, spin_us(), false)) {
      std::unique_lock<std::mutex> lock(job->mu);
      job->finished.wait(lock, all_done);
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (job_ == job) job_.reset();
    }
    if (job->error) std::rethrow_exception(job->error);
  }

 private:
  Pool() {
#ifdef _OPENMP
    threads_ = std::max(1, omp_get_max_threads());
#else
    threads_ = 1;
#endif
    spin_us_ = spin_us_from_env();
  }

  void grow(int workers) {  // mu_ held
    while (int(workers_.size()) < workers) {
      workers_.emplace_back([this] { worker_loop(); });
      workers_.back().detach();
    }
  }

  // Between jobs a worker polls for the next one for spin_us(), then sleeps.
  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      const auto posted = [&] { return generation_.load(std::memory_order_acquire) != seen; };
      spin_until(posted, spin_us(), true);
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        if (!posted()) {
          ++sleepers_;
          wake_.wait(lock, posted);
          --sleepers_;
        }
        seen = generation_.load(std::memory_order_relaxed);
        job = job_;
      }
      if (job && job->joined.fetch_add(1, std::memory_order_relaxed) < job->max_workers) run_indices(*job);
    }
  }

  std::atomic<int> threads_{1};
  std::atomic<int> spin_us_{kDefaultSpinUs};
  std::mutex call_mu_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};  // bumped (under mu_) per job posted
  int sleepers_ = 0;                     // workers blocked on wake_ (under mu_)
  std::shared_ptr<Job> job_;
  std::vector<std::thread> workers_;
};

}  // namespace

int pool_threads() { return Pool::get().threads(); }
bool in_parallel() { return tls_in_parallel; }
void set_pool_threads(int n) { Pool::get().set_threads(n); }
int pool_spin_us() { return Pool::get().spin_us(); }
void set_pool_spin_us(int us) { Pool::get().set_spin_us(us); }

void parallel_for(int64_t n, const std::function<void(int64_t)>& fn, int max_threads) {
  if (n <= 0) return;
  Pool::get().run(n, fn, max_threads);
}

}  // namespace cpu
}  // namespace needle
