// guest-set-user-password (through chpasswd) and the guest-ssh-*-authorized-keys commands.
#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <optional>
#include <cstdio>
#include <sstream>

#include <fmt/format.h>

#include "internal.h"
#include "kiln/common/error.h"
#include "kiln/common/fd.h"

namespace kiln::ga {

namespace {

struct UserEntry {
  std::string home;
  uid_t uid;
  gid_t gid;
};

// Scans a passwd-format file (no NSS needed: works in the static build too).
std::optional<UserEntry> find_in_passwd_file(const std::string& path, const std::string& name) {
  std::FILE* file = std::fopen(path.c_str(), "r");
  if (!file) return std::nullopt;
  std::optional<UserEntry> found;
  while (passwd* entry = ::fgetpwent(file)) {
    if (name == entry->pw_name) {
      found = UserEntry{entry->pw_dir, entry->pw_uid, entry->pw_gid};
      break;
    }
  }
  std::fclose(file);
  return found;
}

UserEntry lookup_user(const SystemPaths& paths, const std::string& name) {
  std::optional<UserEntry> user;
  if (!paths.passwd_file.empty()) {
    user = find_in_passwd_file(paths.passwd_file, name);
  } else {
    passwd entry, *result = nullptr;
    std::vector<char> buffer(16384);
    if (::getpwnam_r(name.c_str(), &entry, buffer.data(), buffer.size(), &result) == 0 && result) {
      user = UserEntry{entry.pw_dir, entry.pw_uid, entry.pw_gid};
    } else {
      user = find_in_passwd_file("/etc/passwd", name);  // NSS unavailable (static build)
    }
  }
  if (!user) throw CommandError(fmt::format("failed to lookup user '{}'", name));
  return *user;
}

std::vector<std::string> string_list(const Json& args, const char* name) {
  std::vector<std::string> out;
  const Json& list = args[name];
  for (size_t i = 0; i < list.size(); ++i) {
    if (!list[i].is_string()) qmp::throw_bad_type(fmt::format("{}[{}]", name, i), ParamType::Str);
    out.push_back(list[i].get<std::string>());
  }
  return out;
}

void check_keys(const std::vector<std::string>& keys) {
  for (const auto& key : keys) {
    if (trim(key).empty()) throw CommandError("authorized key must not be empty");
    if (key.find('\n') != std::string::npos) throw CommandError("authorized key must be one line");
  }
}

std::vector<std::string> read_keys(const std::string& path) {
  std::vector<std::string> keys;
  auto text = read_text_file(path);
  if (!text) return keys;
  std::istringstream lines(*text);
  std::string line;
  while (std::getline(lines, line)) {
    std::string stripped = trim(line);
    if (stripped.empty() || stripped[0] == '#') continue;
    keys.push_back(stripped);
  }
  return keys;
}

void write_keys(const UserEntry& user, const std::string& path, const std::vector<std::string>& keys) {
  std::string ssh_dir = user.home + "/.ssh";
  if (::mkdir(ssh_dir.c_str(), 0700) == 0) {
    if (::chown(ssh_dir.c_str(), user.uid, user.gid) < 0 && geteuid() == 0) {
      throw CommandError(fmt::format("failed to set ownership of '{}': {}", ssh_dir, kiln::errno_text(errno)));
    }
  } else if (errno != EEXIST) {
    throw CommandError(fmt::format("failed to create directory '{}': {}", ssh_dir, kiln::errno_text(errno)));
  }
  std::string text;
  for (const auto& key : keys) text += key + "\n";
  std::string temp = path + ".kiln-ga.tmp";
  UniqueFd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd.valid()) throw CommandError(fmt::format("failed to write to '{}': {}", path, kiln::errno_text(errno)));
  if (::write(fd.get(), text.data(), text.size()) != ssize_t(text.size()) || ::fsync(fd.get()) < 0) {
    int err = errno;
    ::unlink(temp.c_str());
    throw CommandError(fmt::format("failed to write to '{}': {}", path, kiln::errno_text(err)));
  }
  if (::fchown(fd.get(), user.uid, user.gid) < 0 && geteuid() == 0) {
    ::unlink(temp.c_str());
    throw CommandError(fmt::format("failed to set ownership of '{}': {}", path, kiln::errno_text(errno)));
  }
  if (::rename(temp.c_str(), path.c_str()) < 0) {
    int err = errno;
    ::unlink(temp.c_str());
    throw CommandError(fmt::format("failed to write to '{}': {}", path, kiln::errno_text(err)));
  }
}

}  // namespace

void register_user_commands(qmp::Dispatcher& dispatcher, const AgentConfig& config) {
  const SystemPaths& paths = config.paths;
  dispatcher.add({"guest-set-user-password",
                  {{"username", ParamType::Str}, {"password", ParamType::Str}, {"crypted", ParamType::Bool}},
                  [&paths](const Json& args) {
                    std::string user = args["username"].get<std::string>();
                    std::string password = base64_decode(args["password"].get<std::string>());
                    bool crypted = args["crypted"].get<bool>();
                    if (!crypted && password.find_first_not_of(
                                        " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`"
                                        "abcdefghijklmnopqrstuvwxyz{|}~") != std::string::npos) {
                      throw CommandError("password contains non-printable characters");
                    }
                    if (password.find('\n') != std::string::npos) throw CommandError("forbidden characters in raw password");
                    if (user.find_first_of(":\n") != std::string::npos) throw CommandError("forbidden characters in username");
                    std::vector<std::string> chpasswd_args;
                    if (crypted) chpasswd_args.push_back("-e");
                    int status = run_helper(paths, "chpasswd", chpasswd_args, user + ":" + password + "\n");
                    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                      throw CommandError("child process has failed to set user password");
                    }
                    return Json::object();
                  }});
  dispatcher.add({"guest-ssh-get-authorized-keys", {{"username", ParamType::Str}}, [&paths](const Json& args) {
                    UserEntry user = lookup_user(paths, args["username"].get<std::string>());
                    return Json{{"keys", read_keys(user.home + "/.ssh/authorized_keys")}};
                  }});
  dispatcher.add({"guest-ssh-add-authorized-keys",
                  {{"username", ParamType::Str}, {"keys", ParamType::Array}, {"reset", ParamType::Bool, true}},
                  [&paths](const Json& args) {
                    UserEntry user = lookup_user(paths, args["username"].get<std::string>());
                    std::vector<std::string> added = string_list(args, "keys");
                    check_keys(added);
                    std::string path = user.home + "/.ssh/authorized_keys";
                    std::vector<std::string> keys;
                    if (!optional_arg<bool>(args, "reset").value_or(false)) keys = read_keys(path);
                    for (auto& key : added) {
                      key = trim(key);
                      if (std::find(keys.begin(), keys.end(), key) == keys.end()) keys.push_back(key);
                    }
                    write_keys(user, path, keys);
                    return Json::object();
                  }});
  dispatcher.add({"guest-ssh-remove-authorized-keys", {{"username", ParamType::Str}, {"keys", ParamType::Array}},
                  [&paths](const Json& args) {
                    UserEntry user = lookup_user(paths, args["username"].get<std::string>());
                    std::vector<std::string> removed = string_list(args, "keys");
                    check_keys(removed);
                    for (auto& key : removed) key = trim(key);
                    std::string path = user.home + "/.ssh/authorized_keys";
                    if (::access(path.c_str(), F_OK) != 0) return Json::object();
                    std::vector<std::string> keys = read_keys(path);
                    std::erase_if(keys, [&](const std::string& key) {
                      return std::find(removed.begin(), removed.end(), key) != removed.end();
                    });
                    write_keys(user, path, keys);
                    return Json::object();
                  }});
}

}  // namespace kiln::ga
