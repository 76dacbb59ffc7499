#include "exec.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <thread>

#include <fmt/format.h>

#include "internal.h"
#include "kiln/common/error.h"
#include "kiln/common/fd.h"

extern char** environ;

namespace kiln::ga {

namespace {

void make_pipe(UniqueFd& read_end, UniqueFd& write_end) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) < 0) throw kiln::system_error(errno, "failed to create pipe");
  read_end.reset(fds[0]);
  write_end.reset(fds[1]);
}

// Moves data between the child's pipes until both outputs close, then reaps it.
void pump(pid_t pid, UniqueFd input, UniqueFd out, UniqueFd err, std::string input_data, ExecResult& result,
          std::mutex& mutex) {
  std::string out_data, err_data;
  bool out_truncated = false, err_truncated = false;
  size_t input_offset = 0;
  if (input.valid()) ::fcntl(input.get(), F_SETFL, O_NONBLOCK);
  std::array<char, 65536> chunk;
  while (input.valid() || out.valid() || err.valid()) {
    std::array<pollfd, 3> fds{};
    nfds_t count = 0;
    auto add = [&](UniqueFd& fd, short events) {
      if (!fd.valid()) return;
      fds[count] = {fd.get(), events, 0};
      ++count;
    };
    add(input, POLLOUT);
    add(out, POLLIN);
    add(err, POLLIN);
    if (::poll(fds.data(), count, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (nfds_t i = 0; i < count; ++i) {
      if (!fds[i].revents) continue;
      int fd = fds[i].fd;
      if (input.valid() && fd == input.get()) {
        ssize_t n = ::write(fd, input_data.data() + input_offset, input_data.size() - input_offset);
        if (n > 0) input_offset += size_t(n);
        if ((n < 0 && errno != EAGAIN && errno != EINTR) || input_offset == input_data.size()) input.reset();
        continue;
      }
      bool is_out = out.valid() && fd == out.get();
      std::string& data = is_out ? out_data : err_data;
      bool& truncated = is_out ? out_truncated : err_truncated;
      ssize_t n = ::read(fd, chunk.data(), chunk.size());
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) {
        (is_out ? out : err).reset();
        continue;
      }
      size_t room = ExecTable::kMaxOutput - std::min(data.size(), ExecTable::kMaxOutput);
      if (size_t(n) > room) truncated = true;
      data.append(chunk.data(), std::min(size_t(n), room));
    }
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  std::lock_guard lock(mutex);
  result.out = std::move(out_data);
  result.err = std::move(err_data);
  result.out_truncated = out_truncated;
  result.err_truncated = err_truncated;
  if (WIFSIGNALED(status)) {
    result.signal = WTERMSIG(status);
  } else {
    result.exit_code = WEXITSTATUS(status);
  }
  result.exited = true;
}

}  // namespace


std::int64_t ExecTable::start(ExecRequest request) {
  UniqueFd in_read, in_write, out_read, out_write, err_read, err_write;
  bool feed_input = !request.input.empty();
  if (feed_input) make_pipe(in_read, in_write);
  if (request.capture_stdout) make_pipe(out_read, out_write);
  if (request.capture_stderr) make_pipe(err_read, err_write);

  std::vector<char*> argv;
  argv.push_back(request.path.data());
  for (auto& arg : request.args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (auto& entry : request.env) envp.push_back(entry.data());
  envp.push_back(nullptr);

  // An error pipe tells the parent why exec failed, as qemu-ga reports it.
  UniqueFd status_read, status_write;
  make_pipe(status_read, status_write);
  pid_t pid = ::fork();
  if (pid < 0) throw kiln::system_error(errno, "failed to create child process");
  if (pid == 0) {
    int null_fd = ::open("/dev/null", O_RDWR);
    ::dup2(feed_input ? in_read.get() : null_fd, 0);
    ::dup2(out_write.valid() ? out_write.get() : null_fd, 1);
    if (request.merge_output && out_write.valid()) ::dup2(out_write.get(), 2);
    else ::dup2(err_write.valid() ? err_write.get() : null_fd, 2);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGPIPE, SIG_DFL);
    char** env = request.has_env ? envp.data() : environ;
    ::execvpe(request.path.c_str(), argv.data(), env);
    int err = errno;
    (void)!::write(status_write.get(), &err, sizeof err);
    ::_exit(127);
  }
  status_write.reset();
  in_read.reset();
  out_write.reset();
  err_write.reset();
  int exec_errno = 0;
  ssize_t n;
  while ((n = ::read(status_read.get(), &exec_errno, sizeof exec_errno)) < 0 && errno == EINTR) {
  }
  if (n == sizeof exec_errno) {
    while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    throw CommandError(fmt::format("Guest agent command failed, error was 'Failed to execute child process \u201c{}\u201d ({})'",
                                   request.path, kiln::errno_text(exec_errno)));
  }

  auto child = std::make_shared<Child>();
  std::string input = std::move(request.input);
  child->request = std::move(request);
  {
    std::lock_guard lock(mutex_);
    children_[pid] = child;
  }
  std::thread([pid, child, input = std::move(input), in = std::move(in_write), out = std::move(out_read),
               err = std::move(err_read)]() mutable {
    pump(pid, std::move(in), std::move(out), std::move(err), std::move(input), child->result, child->mutex);
  }).detach();
  return pid;
}

ExecResult ExecTable::status(std::int64_t pid, bool& captured_stdout, bool& captured_stderr) {
  std::shared_ptr<Child> child;
  {
    std::lock_guard lock(mutex_);
    auto it = children_.find(pid);
    if (it == children_.end()) throw CommandError("Invalid parameter 'pid'");
    child = it->second;
  }
  std::lock_guard child_lock(child->mutex);
  captured_stdout = child->request.capture_stdout;
  captured_stderr = child->request.capture_stderr;
  if (!child->result.exited) return ExecResult{};
  ExecResult result = std::move(child->result);
  std::lock_guard lock(mutex_);
  children_.erase(pid);
  return result;
}

void register_exec_commands(qmp::Dispatcher& dispatcher, ExecTable& execs) {
  dispatcher.add({"guest-exec",
                  {{"path", ParamType::Str},
                   {"arg", ParamType::Array, true},
                   {"env", ParamType::Array, true},
                   {"input-data", ParamType::Str, true},
                   {"capture-output", ParamType::Any, true}},
                  [&](const Json& args) {
                    ExecRequest request;
                    request.path = args["path"].get<std::string>();
                    auto strings = [&](const char* name, std::vector<std::string>& out) {
                      auto it = args.find(name);
                      if (it == args.end()) return false;
                      size_t index = 0;
                      for (const auto& element : *it) {
                        if (!element.is_string()) {
                          qmp::throw_bad_type(fmt::format("{}[{}]", name, index), ParamType::Str);
                        }
                        out.push_back(element.get<std::string>());
                        ++index;
                      }
                      return true;
                    };
                    strings("arg", request.args);
                    request.has_env = strings("env", request.env);
                    if (auto input = optional_arg<std::string>(args, "input-data")) request.input = base64_decode(*input);
                    // GuestExecCaptureOutput: a bool, or a GuestExecCaptureOutputMode name.
                    if (auto it = args.find("capture-output"); it != args.end()) {
                      if (it->is_boolean()) {
                        request.capture_stdout = request.capture_stderr = it->get<bool>();
                      } else if (it->is_string()) {
                        std::string mode = it->get<std::string>();
                        if (mode == "none") {
                        } else if (mode == "stdout") {
                          request.capture_stdout = true;
                        } else if (mode == "stderr") {
                          request.capture_stderr = true;
                        } else if (mode == "separated") {
                          request.capture_stdout = request.capture_stderr = true;
                        } else if (mode == "merged") {
                          request.capture_stdout = request.merge_output = true;
                        } else {
                          throw CommandError("Parameter 'capture-output' does not accept value '" + mode + "'");
                        }
                      } else {
                        throw CommandError("Invalid parameter type for 'capture-output', expected: GuestExecCaptureOutput");
                      }
                    }
                    return Json{{"pid", execs.start(std::move(request))}};
                  }});
  dispatcher.add({"guest-exec-status", {{"pid", ParamType::Int}}, [&](const Json& args) {
                    bool captured_out = false, captured_err = false;
                    ExecResult result = execs.status(args["pid"].get<std::int64_t>(), captured_out, captured_err);
                    Json reply = {{"exited", result.exited}};
                    if (!result.exited) return reply;
                    if (result.signal) reply["signal"] = result.signal;
                    else reply["exitcode"] = result.exit_code;
                    if (captured_out) {
                      reply["out-data"] = base64_encode(result.out);
                      reply["out-truncated"] = result.out_truncated;
                    }
                    if (captured_err) {
                      reply["err-data"] = base64_encode(result.err);
                      reply["err-truncated"] = result.err_truncated;
                    }
                    return reply;
                  }});
}

}  // namespace kiln::ga
