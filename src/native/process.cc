// Process-level syscalls Node lacks: flock(2) on an open file (one agent per state directory;
// the kernel drops the lock when the process dies, even by kill -9) and the datagram that
// tells systemd about readiness (sd_notify; Node has no AF_UNIX datagram sockets).
#include <stddef.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <napi.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "errors.h"
#include "syscall_support.h"

namespace coriolis {

namespace {

// tryLockExclusive(fd): true when this process now holds the lock, false when another does.
Napi::Value TryLockExclusive(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "fd must be a number");
  const int fd = info[0].As<Napi::Number>().Int32Value();
  int result;
  do {
    result = flock(fd, LOCK_EX | LOCK_NB);
  } while (result != 0 && errno == EINTR);
  if (result == 0) return Napi::Boolean::New(env, true);
  if (errno == EWOULDBLOCK) return Napi::Boolean::New(env, false);
  throw ErrnoError(env, errno, "flock");
}

// notifySocket(path, message): one datagram to an AF_UNIX socket; a leading '@' names the
// abstract namespace, as systemd's NOTIFY_SOCKET does.
Napi::Value NotifySocket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string path = ToPath(info, 0);
  if (info.Length() < 2 || !info[1].IsString()) throw Napi::TypeError::New(env, "message must be a string");
  const std::string message = info[1].As<Napi::String>().Utf8Value();

  sockaddr_un address = {};
  address.sun_family = AF_UNIX;
  if (path.size() >= sizeof(address.sun_path)) throw ErrnoError(env, ENAMETOOLONG, "sendto", path);
  std::memcpy(address.sun_path, path.data(), path.size());
  if (path[0] == '@') address.sun_path[0] = '\0';
  // Abstract names are not NUL-terminated: the length says where they end.
  const socklen_t length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + (path[0] == '@' ? 0 : 1));

  const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw ErrnoError(env, errno, "socket");
  ssize_t sent;
  do {
    sent = sendto(fd, message.data(), message.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&address), length);
  } while (sent < 0 && errno == EINTR);
  const int err = errno;
  close(fd);
  if (sent < 0) throw ErrnoError(env, err, "sendto", path);
  return env.Undefined();
}

}  // namespace

void InitProcess(Napi::Env env, Napi::Object exports) {
  exports.Set("tryLockExclusive", Napi::Function::New(env, TryLockExclusive));
  exports.Set("notifySocket", Napi::Function::New(env, NotifySocket));
}

}  // namespace coriolis
