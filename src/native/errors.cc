#include "errors.h"

#include <cerrno>
#include <cstring>

namespace coriolis {

// Names of Linux's errno values, ours rather than glibc's strerrorname_np: that arrived in
// glibc 2.32, and the release runs on 2.28.
static const char* KnownErrnoName(int err) {
#define N(name) \
  case name:    \
    return #name;
  switch (err) {
    N(EPERM) N(ENOENT) N(ESRCH) N(EINTR) N(EIO) N(ENXIO) N(E2BIG) N(ENOEXEC) N(EBADF)
    N(ECHILD) N(EAGAIN) N(ENOMEM) N(EACCES) N(EFAULT) N(ENOTBLK) N(EBUSY) N(EEXIST)
    N(EXDEV) N(ENODEV) N(ENOTDIR) N(EISDIR) N(EINVAL) N(ENFILE) N(EMFILE) N(ENOTTY)
    N(ETXTBSY) N(EFBIG) N(ENOSPC) N(ESPIPE) N(EROFS) N(EMLINK) N(EPIPE) N(EDOM) N(ERANGE)
    N(EDEADLK) N(ENAMETOOLONG) N(ENOLCK) N(ENOSYS) N(ENOTEMPTY) N(ELOOP) N(ENOMSG) N(EIDRM)
    N(ECHRNG) N(EL2NSYNC) N(EL3HLT) N(EL3RST) N(ELNRNG) N(EUNATCH) N(ENOCSI) N(EL2HLT)
    N(EBADE) N(EBADR) N(EXFULL) N(ENOANO) N(EBADRQC) N(EBADSLT) N(EBFONT) N(ENOSTR)
    N(ENODATA) N(ETIME) N(ENOSR) N(ENONET) N(ENOPKG) N(EREMOTE) N(ENOLINK) N(EADV)
    N(ESRMNT) N(ECOMM) N(EPROTO) N(EMULTIHOP) N(EDOTDOT) N(EBADMSG) N(EOVERFLOW) N(ENOTUNIQ)
    N(EBADFD) N(EREMCHG) N(ELIBACC) N(ELIBBAD) N(ELIBSCN) N(ELIBMAX) N(ELIBEXEC) N(EILSEQ)
    N(ERESTART) N(ESTRPIPE) N(EUSERS) N(ENOTSOCK) N(EDESTADDRREQ) N(EMSGSIZE) N(EPROTOTYPE)
    N(ENOPROTOOPT) N(EPROTONOSUPPORT) N(ESOCKTNOSUPPORT) N(EOPNOTSUPP) N(EPFNOSUPPORT)
    N(EAFNOSUPPORT) N(EADDRINUSE) N(EADDRNOTAVAIL) N(ENETDOWN) N(ENETUNREACH) N(ENETRESET)
    N(ECONNABORTED) N(ECONNRESET) N(ENOBUFS) N(EISCONN) N(ENOTCONN) N(ESHUTDOWN)
    N(ETOOMANYREFS) N(ETIMEDOUT) N(ECONNREFUSED) N(EHOSTDOWN) N(EHOSTUNREACH) N(EALREADY)
    N(EINPROGRESS) N(ESTALE) N(EUCLEAN) N(ENOTNAM) N(ENAVAIL) N(EISNAM) N(EREMOTEIO)
    N(EDQUOT) N(ENOMEDIUM) N(EMEDIUMTYPE) N(ECANCELED) N(ENOKEY) N(EKEYEXPIRED)
    N(EKEYREVOKED) N(EKEYREJECTED) N(EOWNERDEAD) N(ENOTRECOVERABLE) N(ERFKILL) N(EHWPOISON)
  }
#undef N
  return nullptr;
}

std::string ErrnoName(int err) {
  const char* name = KnownErrnoName(err);
  return name != nullptr ? std::string(name) : "E" + std::to_string(err);
}

Napi::Error ErrnoError(Napi::Env env, int err, const std::string& syscall,
                       const std::string& path) {
  std::string message = syscall;
  if (!path.empty()) message += " " + path;
  message += ": " + std::string(strerror(err)) + " (" + ErrnoName(err) + ")";
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, ErrnoName(err)));
  error.Set("errno", Napi::Number::New(env, err));
  error.Set("syscall", Napi::String::New(env, syscall));
  if (!path.empty()) error.Set("path", Napi::String::New(env, path));
  return error;
}

}  // namespace coriolis
