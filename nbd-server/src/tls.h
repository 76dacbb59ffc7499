// TLS for kiln-nbd through OpenSSL, in one place: credentials as qemu's
// tls-creds-x509 / tls-creds-psk objects describe them, and a stream that
// lets one reader thread and many replying threads share a connection.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
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

// --tls-authz with an authz-simple object: the one identity allowed in.
// For X.509 it is the client certificate's distinguished name as GnuTLS
// prints it for qemu-nbd: RFC 4514 escaping, parts in the certificate's order
// (e.g. "C=GB,O=Example,CN=client"); for PSK it is the client's PSK username.
struct TlsAuthorization {
  std::string id;
  std::string identity;
};

class TlsContext {
 public:
  // Loads the credentials; throws kiln::Error naming the missing/bad file.
  static std::unique_ptr<TlsContext> create(const TlsCredentials& credentials,
                                            std::optional<TlsAuthorization> authorization = std::nullopt);
  ~TlsContext();
  SSL_CTX* get() const { return ctx_; }
  TlsCredentials::Kind kind() const { return kind_; }
  const std::optional<TlsAuthorization>& authorization() const { return authorization_; }

 private:
  TlsContext() = default;
  SSL_CTX* ctx_ = nullptr;
  TlsCredentials::Kind kind_ = TlsCredentials::Kind::X509;
  std::optional<TlsAuthorization> authorization_;
};

// The distinguished name of an X.509 subject, in the form described above.
std::string distinguished_name(X509_NAME* name);

// A TLS session over a non-blocking socket. read() may run while send() runs
// on other threads: every OpenSSL call is made under one mutex, and waiting
// for the socket happens outside it.
class TlsStream {
 public:
  TlsStream(const TlsContext& context, int fd);
  ~TlsStream();
  TlsStream(const TlsStream&) = delete;
  TlsStream& operator=(const TlsStream&) = delete;

  // Runs the server handshake, then the --tls-authz check; throws
  // kiln::Error on failure (the caller drops the connection).
  void accept();
  // Reads up to buffer.size() bytes; 0 at end of stream; throws on errors.
  size_t read(std::span<std::byte> buffer);
  // Writes everything; throws on errors.
  void write(std::span<const std::byte> data);

 private:
  void authorize();

  const TlsContext& context_;
  std::string psk_identity_;  // set by the PSK callback during the handshake
  SSL* ssl_ = nullptr;
  int fd_;
  std::mutex mutex_;
};

}  // namespace kiln::nbd
