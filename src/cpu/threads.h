// A small thread pool for the CPU kernels, built for a shared machine.
//
// parallel_for(n, fn) runs fn(i) for i in [0, n): the calling thread and the
// pool's workers claim indices from one atomic counter. Waiting is passive
// (condition variables) after a short, bounded spin, and the caller never
// waits for a worker to show up: it waits only for indices a worker has
// already claimed. A worker
// whose core is taken by another process therefore costs at most the chunk it
// holds, never the whole call (the fork/join barrier of an OpenMP team waits
// for every thread, which on a busy 2-core machine turned 2-thread runs 10-100x
// slower than 1-thread ones).
//
// Spin before sleeping: waking a thread that sleeps in the kernel can take a
// millisecond or more on a virtual machine (longer than a whole 512^3 GEMM),
// so an idle worker first polls for the next job for NEEDLE_SPIN_US
// microseconds (default 100; 0 = sleep at once), pausing (_mm_pause) and
// yielding its core to any other runnable thread as it goes, and only then
// blocks. The caller likewise polls for that long before it blocks waiting for
// the chunks workers hold. Back-to-back calls thus find their workers awake,
// while a process that wants the core loses at most that much per call, and
// idle CPU use drops to zero that long after the last call.
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>

namespace needle {
namespace cpu {

// Threads used by parallel_for (the caller included); >= 1.
int pool_threads();
void set_pool_threads(int n);

// Runs fn(0) ... fn(n - 1), on up to min(pool_threads(), max_threads) threads.
// Serial when n <= 1, when one thread is asked for, or when called from inside
// another parallel_for (no nesting). The first exception thrown by fn is
// rethrown in the caller once every claimed index has finished.
void parallel_for(int64_t n, const std::function<void(int64_t)>& fn, int max_threads = 1 << 30);

// Microseconds idle threads poll before they block (NEEDLE_SPIN_US at start;
// default 100, 0 = block at once).
int pool_spin_us();
void set_pool_spin_us(int us);

// True inside fn of a parallel_for (where a nested parallel_for runs serially).
bool in_parallel();

// Below this many elements a loop stays on one thread: waking the team costs
// more than the work (a ResNet9 step's 64K-256K-element arrays ran 15% slower
// on 2 threads with 32K).
constexpr int64_t kParallelThreshold = 1 << 18;

// Splits [0, n) into pieces of at least `grain` elements and runs
// body(begin, end) on the pool's threads; one piece (serial) when small.
template <typename Body>
void parallel_range(int64_t n, int64_t grain, Body body) {
  const int64_t nt = pool_threads();
  if (nt <= 1 || n <= grain) {
    body(int64_t(0), n);
    return;
  }
  // A few pieces per thread so a thread that loses its core is covered by the others.
  const int64_t pieces = std::min<int64_t>((n + grain - 1) / grain, nt * 4);
  parallel_for(pieces, [&](int64_t t) { body(n * t / pieces, n * (t + 1) / pieces); });
}

}  // namespace cpu
}  // namespace needle
