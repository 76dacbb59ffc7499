#include "tls.h"

#include <openssl/err.h>
#include <poll.h>

#include <cstring>
#include <fstream>
#include <map>

#include "kiln/common/error.h"
#include "kiln/common/log.h"

namespace kiln::nbd {
namespace {

std::string openssl_error() {
  unsigned long code = ERR_get_error();
  if (code == 0) return "unknown TLS error";
  char text[256];
  ERR_error_string_n(code, text, sizeof text);
  ERR_clear_error();
  return text;
}

// PSK keys ("username:hexkey" lines) for the server callback, by SSL_CTX.
std::mutex psk_mutex;
std::map<const SSL_CTX*, std::map<std::string, std::string>> psk_tables;

std::map<std::string, std::string> load_psk_file(const std::string& path) {
  std::ifstream file(path);
  if (!file) throw system_error(errno, "Could not read PSK file '{}'", path);
  std::map<std::string, std::string> keys;
  std::string line;
  while (std::getline(file, line)) {
    if (line.empty()) continue;
    auto colon = line.find(':');
    if (colon == std::string::npos) throw invalid_argument("PSK file '{}': line without 'username:key'", path);
    std::string hex = line.substr(colon + 1);
    if (hex.size() % 2 != 0 || hex.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) {
      throw invalid_argument("PSK file '{}': key for '{}' is not hexadecimal", path, line.substr(0, colon));
    }
    std::string key;
    for (size_t i = 0; i < hex.size(); i += 2) key += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
    keys[line.substr(0, colon)] = std::move(key);
  }
  if (keys.empty()) throw invalid_argument("PSK file '{}' has no keys", path);
  return keys;
}

unsigned psk_server_callback(SSL* ssl, const char* identity, unsigned char* psk, unsigned max_psk_length) {
  std::lock_guard lock(psk_mutex);
  auto table = psk_tables.find(SSL_get_SSL_CTX(ssl));
  if (table == psk_tables.end() || identity == nullptr) return 0;
  auto key = table->second.find(identity);
  if (key == table->second.end() || key->second.size() > max_psk_length) {
    log::warn("TLS PSK identity '{}' is unknown", identity ? identity : "");
    return 0;
  }
  std::memcpy(psk, key->second.data(), key->second.size());
  // OpenSSL forgets the identity for TLS 1.3 sessions; keep it for --tls-authz.
  if (auto* accepted = static_cast<std::string*>(SSL_get_app_data(ssl)); accepted != nullptr) *accepted = identity;
  return static_cast<unsigned>(key->second.size());
}

}  // namespace

std::unique_ptr<TlsContext> TlsContext::create(const TlsCredentials& credentials,
                                               std::optional<TlsAuthorization> authorization) {
  if (credentials.endpoint != "server") {
    throw invalid_argument("Expecting TLS credentials with a server endpoint ('{}' has endpoint={})", credentials.id,
                           credentials.endpoint);
  }
  // Without peer verification there is no client certificate to authorize;
  // refusing here beats silently letting everyone in.
  if (authorization && credentials.kind == TlsCredentials::Kind::X509 && !credentials.verify_peer) {
    throw invalid_argument("TLS authorization '{}' needs client certificates, but '{}' has verify-peer=off",
                           authorization->id, credentials.id);
  }
  std::unique_ptr<TlsContext> context(new TlsContext);
  context->authorization_ = std::move(authorization);
  context->kind_ = credentials.kind;
  context->ctx_ = SSL_CTX_new(TLS_server_method());
  if (context->ctx_ == nullptr) throw Error(ENOMEM, "Could not create TLS context: " + openssl_error());
  SSL_CTX* ctx = context->ctx_;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  if (credentials.kind == TlsCredentials::Kind::X509) {
    const std::string cert = credentials.dir + "/server-cert.pem";
    const std::string key = credentials.dir + "/server-key.pem";
    const std::string ca = credentials.dir + "/ca-cert.pem";
    if (SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1) {
      throw invalid_argument("Could not load TLS certificate '{}': {}", cert, openssl_error());
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1) {
      throw invalid_argument("Could not load TLS private key '{}': {}", key, openssl_error());
    }
    if (SSL_CTX_check_private_key(ctx) != 1) throw invalid_argument("TLS key '{}' does not match '{}'", key, cert);
    if (credentials.verify_peer) {
      if (SSL_CTX_load_verify_locations(ctx, ca.c_str(), nullptr) != 1) {
        throw invalid_argument("Could not load TLS CA certificate '{}': {}", ca, openssl_error());
      }
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    }
  } else {
    auto keys = load_psk_file(credentials.dir + "/keys.psk");
    {
      std::lock_guard lock(psk_mutex);
      psk_tables[ctx] = std::move(keys);
    }
    SSL_CTX_set_psk_server_callback(ctx, psk_server_callback);
    // TLS 1.2 PSK suites; TLS 1.3 uses the callback with SHA-256 suites.
    SSL_CTX_set_cipher_list(ctx, "PSK:DHE-PSK:ECDHE-PSK:!aNULL:!eNULL");
  }
  return context;
}

TlsContext::~TlsContext() {
  {
    std::lock_guard lock(psk_mutex);
    psk_tables.erase(ctx_);
  }
  SSL_CTX_free(ctx_);
}

std::string distinguished_name(X509_NAME* name) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
  if (!bio) throw Error(ENOMEM, "Could not allocate a BIO");
  // RFC 4514 escaping but the certificate's own order (no reversal) and UTF-8
  // kept as it is: the text GnuTLS's gnutls_x509_crt_get_dn gives qemu-nbd.
  const unsigned long flags = XN_FLAG_RFC2253 & ~XN_FLAG_DN_REV & ~ASN1_STRFLGS_ESC_MSB;
  if (X509_NAME_print_ex(bio.get(), name, 0, flags) < 0) throw Error(EPROTO, "Could not print a certificate name");
  char* text = nullptr;
  const long length = BIO_get_mem_data(bio.get(), &text);
  return std::string(text, static_cast<size_t>(length));
}

TlsStream::TlsStream(const TlsContext& context, int fd) : context_(context), fd_(fd) {
  ssl_ = SSL_new(context.get());
  if (ssl_ == nullptr || SSL_set_fd(ssl_, fd) != 1) throw Error(ENOMEM, "Could not create TLS session: " + openssl_error());
  SSL_set_app_data(ssl_, &psk_identity_);
}

TlsStream::~TlsStream() {
  if (ssl_ != nullptr) SSL_free(ssl_);
}

namespace {
// Waits for the socket; false when `timeout_ms` passed without it becoming ready.
bool wait_socket(int fd, short events, int timeout_ms = -1) {
  pollfd pfd{.fd = fd, .events = events, .revents = 0};
  int ready;
  while ((ready = poll(&pfd, 1, timeout_ms)) == -1 && errno == EINTR) {
  }
  return ready != 0;
}

// A client that stops reading for this long is dropped rather than letting
// it hold a worker thread forever.
constexpr int kWriteStallMs = 30000;
}  // namespace

void TlsStream::accept() {
  while (true) {
    int result;
    int error;
    {
      std::lock_guard lock(mutex_);
      ERR_clear_error();
      result = SSL_accept(ssl_);
      error = SSL_get_error(ssl_, result);
    }
    if (result == 1) {
      authorize();
      return;
    }
    if (error == SSL_ERROR_WANT_READ) {
      wait_socket(fd_, POLLIN);
    } else if (error == SSL_ERROR_WANT_WRITE) {
      wait_socket(fd_, POLLOUT);
    } else {
      throw Error(EPROTO, "TLS handshake failed: " + openssl_error());
    }
  }
}

void TlsStream::authorize() {
  const auto& authorization = context_.authorization();
  if (!authorization) return;
  if (context_.kind() == TlsCredentials::Kind::Psk) {
    if (psk_identity_ != authorization->identity) {
      throw Error(EACCES, fmt::format("TLS PSK authz check for {} is denied", psk_identity_));
    }
    return;
  }
  std::string identity;
  {
    std::lock_guard lock(mutex_);
    std::unique_ptr<X509, decltype(&X509_free)> certificate(SSL_get1_peer_certificate(ssl_), X509_free);
    if (!certificate) throw Error(EACCES, "TLS authorization failed: the client sent no certificate");
    identity = distinguished_name(X509_get_subject_name(certificate.get()));
  }
  if (identity != authorization->identity) {
    throw Error(EACCES, fmt::format("TLS x509 authz check for {} is denied", identity));  // qemu's wording
  }
}

size_t TlsStream::read(std::span<std::byte> buffer) {
  while (true) {
    int result;
    int error;
    bool buffered;
    {
      std::lock_guard lock(mutex_);
      ERR_clear_error();
      result = SSL_read(ssl_, buffer.data(), static_cast<int>(std::min<size_t>(buffer.size(), 1 << 30)));
      error = SSL_get_error(ssl_, result);
      // A replying thread may have pulled records off the socket meanwhile.
      buffered = SSL_has_pending(ssl_) == 1;
    }
    if (result > 0) return static_cast<size_t>(result);
    if (error == SSL_ERROR_ZERO_RETURN) return 0;
    if (error == SSL_ERROR_WANT_READ) {
      if (!buffered) wait_socket(fd_, POLLIN);
    } else if (error == SSL_ERROR_WANT_WRITE) {
      wait_socket(fd_, POLLOUT);
    } else if (error == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
      return 0;  // the peer closed without close_notify
    } else {
      throw Error(EPROTO, "TLS read failed: " + openssl_error());
    }
  }
}

void TlsStream::write(std::span<const std::byte> data) {
  // The caller serialises writers; the mutex keeps the reader out of OpenSSL.
  while (!data.empty()) {
    int result;
    int error;
    {
      std::lock_guard lock(mutex_);
      ERR_clear_error();
      result = SSL_write(ssl_, data.data(), static_cast<int>(std::min<size_t>(data.size(), 1 << 30)));
      error = SSL_get_error(ssl_, result);
    }
    if (result > 0) {
      data = data.subspan(static_cast<size_t>(result));
    } else if (error == SSL_ERROR_WANT_WRITE || error == SSL_ERROR_WANT_READ) {
      if (!wait_socket(fd_, error == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN, kWriteStallMs)) {
        throw Error(ETIMEDOUT, "TLS write stalled: the client stopped reading");
      }
    } else {
      throw Error(EPIPE, "TLS write failed: " + openssl_error());
    }
  }
}

}  // namespace kiln::nbd
