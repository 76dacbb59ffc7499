// The --tls-authz name check's input: certificate names printed the way
// GnuTLS prints them for qemu-nbd (interop/nbd/tls.sh checks against
// qemu-nbd itself), and start-up refusals of unusable authz set-ups.
#include <gtest/gtest.h>
#include <openssl/x509.h>

#include <memory>

#include "kiln/common/error.h"
#include "tls.h"

namespace kiln::nbd::test {
namespace {

using NamePtr = std::unique_ptr<X509_NAME, decltype(&X509_NAME_free)>;

NamePtr make_name(std::initializer_list<std::pair<const char*, const char*>> parts) {
  NamePtr name(X509_NAME_new(), X509_NAME_free);
  for (const auto& [field, value] : parts) {
    X509_NAME_add_entry_by_txt(name.get(), field, MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(value), -1, -1, 0);
  }
  return name;
}

TEST(NbdTlsAuthz, DistinguishedNameKeepsCertificateOrder) {
  auto name = make_name({{"C", "GB"}, {"ST", "London"}, {"O", "Example Org"}, {"CN", "laptop.example.com"}});
  EXPECT_EQ(distinguished_name(name.get()), "C=GB,ST=London,O=Example Org,CN=laptop.example.com");
}

TEST(NbdTlsAuthz, DistinguishedNameEscapesAsRfc4514) {
  auto name = make_name({{"O", "Kiln Test, Ltd"}, {"CN", "a+b"}, {"OU", "caf\xc3\xa9"}});
  // Special characters are escaped; UTF-8 stays UTF-8.
  EXPECT_EQ(distinguished_name(name.get()), "O=Kiln Test\\, Ltd,CN=a\\+b,OU=caf\xc3\xa9");
}

TEST(NbdTlsAuthz, AuthzWithoutPeerVerificationIsRefused) {
  TlsCredentials credentials;
  credentials.id = "tls0";
  credentials.dir = "/nonexistent";
  credentials.verify_peer = false;
  try {
    TlsContext::create(credentials, TlsAuthorization{.id = "auth0", .identity = "CN=x"});
    FAIL() << "accepted";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("verify-peer=off"), std::string::npos) << error.what();
  }
}

}  // namespace
}  // namespace kiln::nbd::test
