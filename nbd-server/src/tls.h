// TLS for kiln-nbd through OpenSSL, in one place: credentials as qemu's
// tls-creds-x509 / tls-creds-psk objects describe them, and a stream that
// lets one reader thread and many replying threads share a connection.
#pragma once

#include <memory>
#include <mutex>
#include <span>
#include <string>

#include <openssl/ssl.h>

namespace kiln::nbd {

struct TlsCredentials {
  enum class Kind { X509, Psk };
  Kind kind = Kind::X509;
  std::string id;
  std::string dir;           // ca-cert.pem, server-cert.pem, server-key.pem / keys.psk
  bool verify_peer = true;   // x509: require a client certificate signed by the CA
  std::string endpoint = "server";
};

class TlsContext {
 public:
  // Loads the credentials; throws kiln::Error naming the missing/bad file.
  static std::unique_ptr<TlsContext> create(const TlsCredentials& credentials);
  ~TlsContext();
  SSL_CTX* get() const { return ctx_; }

 private:
  TlsContext() = default;
  SSL_CTX* ctx_ = nullptr;
};

// A TLS session over a non-blocking socket. read() may run while send() runs
// on other threads: every OpenSSL call is made under one mutex, and waiting
// for the socket happens outside it.
class TlsStream {
 public:
  TlsStream(const TlsContext& context, int fd);
  ~TlsStream();
  TlsStream(const TlsStream&) = delete;
  TlsStream& operator=(const TlsStream&) = delete;

  // Runs the server handshake; throws kiln::Error on failure.
  void accept();
  // Reads up to buffer.size() bytes; 0 at end of stream; throws on errors.
  size_t read(std::span<std::byte> buffer);
  // Writes everything; throws on errors.
  void write(std::span<const std::byte> data);

 private:
  SSL* ssl_ = nullptr;
  int fd_;
  std::mutex mutex_;
};

}  // namespace kiln::nbd
