// Built into the release's native addons so that they load on glibc 2.28 (RHEL 8, Debian 10)
// although they are compiled on a newer one. Every definition here is hidden: the addon's own
// references, and those of the static libstdc++ linked into it, bind to these at link time, and
// these call the oldest version of each function that glibc still exports. release/build.js
// fails the build if an addon still asks for a newer symbol, naming it, so that a new one is
// added here rather than shipped.
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

// pthread_setspecific's value is declared access(none): GCC then warns that forwarding it reads
// it uninitialised.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define HIDDEN __attribute__((visibility("hidden")))
// BASE is x86_64's first glibc version: every function there existed by glibc 2.28 (the pthread
// and dl ones in libpthread and libdl, which Node itself loads).
#define OLD(name, base) __asm__(".symver " #name "_base, " #name "@" base)
#define BASE "GLIBC_2.2.5"

// A forwarder: NAME, hidden, calls NAME@BASE.
#define FORWARD(ret, name, params, args) \
  ret name##_base params;                \
  OLD(name, BASE);                       \
  HIDDEN ret name params { return name##_base args; }

FORWARD(int, pthread_create, (pthread_t* t, const pthread_attr_t* a, void* (*f)(void*), void* arg), (t, a, f, arg))
FORWARD(int, pthread_join, (pthread_t t, void** r), (t, r))
FORWARD(int, pthread_detach, (pthread_t t), (t))
FORWARD(int, pthread_once, (pthread_once_t* o, void (*f)(void)), (o, f))
FORWARD(int, pthread_kill, (pthread_t t, int s), (t, s))
FORWARD(int, pthread_sigmask, (int how, const sigset_t* set, sigset_t* old), (how, set, old))
FORWARD(int, pthread_mutex_trylock, (pthread_mutex_t* m), (m))
FORWARD(int, pthread_mutexattr_init, (pthread_mutexattr_t* a), (a))
FORWARD(int, pthread_mutexattr_destroy, (pthread_mutexattr_t* a), (a))
FORWARD(int, pthread_mutexattr_settype, (pthread_mutexattr_t* a, int k), (a, k))
FORWARD(int, pthread_key_create, (pthread_key_t* k, void (*d)(void*)), (k, d))
FORWARD(int, pthread_key_delete, (pthread_key_t k), (k))
FORWARD(int, pthread_setspecific, (pthread_key_t k, const void* v), (k, v))
FORWARD(void*, pthread_getspecific, (pthread_key_t k), (k))
FORWARD(void*, dlopen, (const char* f, int m), (f, m))
FORWARD(int, dlclose, (void* h), (h))
FORWARD(char*, dlerror, (void), ())
FORWARD(void*, dlsym, (void* h, const char* s), (h, s))
FORWARD(double, exp, (double x), (x))
FORWARD(double, log, (double x), (x))
FORWARD(double, log2, (double x), (x))
FORWARD(double, pow, (double x, double y), (x, y))

// The stat family became functions in 2.33; before, <sys/stat.h> called __xstat64 and friends
// with the structure version (1 on x86_64).
#define STAT_VER 1
int __xstat64_base(int ver, const char* path, struct stat64* st);
int __lxstat64_base(int ver, const char* path, struct stat64* st);
int __fxstat64_base(int ver, int fd, struct stat64* st);
OLD(__xstat64, BASE);
OLD(__lxstat64, BASE);
OLD(__fxstat64, BASE);
HIDDEN int stat64(const char* path, struct stat64* st) { return __xstat64_base(STAT_VER, path, st); }
HIDDEN int lstat64(const char* path, struct stat64* st) { return __lxstat64_base(STAT_VER, path, st); }
HIDDEN int fstat64(int fd, struct stat64* st) { return __fxstat64_base(STAT_VER, fd, st); }

// 2.30.
HIDDEN pid_t gettid(void) { return (pid_t)syscall(SYS_gettid); }

// 2.30 (2.34 in libc): libstdc++'s condition_variable waits on the steady clock with it. Before,
// the same wait is a CLOCK_REALTIME deadline: the remaining time, added to the wall clock now.
HIDDEN int pthread_cond_clockwait(pthread_cond_t* cond, pthread_mutex_t* mutex, clockid_t clock,
                                  const struct timespec* deadline) {
  struct timespec now, wall;
  if (clock_gettime(clock, &now) != 0 || clock_gettime(CLOCK_REALTIME, &wall) != 0) return errno;
  int64_t left = (int64_t)(deadline->tv_sec - now.tv_sec) * 1000000000 + (deadline->tv_nsec - now.tv_nsec);
  if (left < 0) left = 0;
  int64_t at = (int64_t)wall.tv_nsec + left % 1000000000;
  struct timespec until = {wall.tv_sec + (time_t)(left / 1000000000) + (time_t)(at / 1000000000), (long)(at % 1000000000)};
  return pthread_cond_timedwait(cond, mutex, &until);
}

// 2.36: libstdc++'s random_device. getrandom(2) is in 2.25; it only returns short for more
// than 256 bytes, or when a signal interrupts it.
HIDDEN uint32_t arc4random(void) {
  uint32_t value;
  while (getrandom(&value, sizeof value, 0) != (ssize_t)sizeof value) {
  }
  return value;
}

// 2.32: libstdc++ skips atomic reference counts while it is true; never claiming so is always safe.
HIDDEN char __libc_single_threaded = 0;
