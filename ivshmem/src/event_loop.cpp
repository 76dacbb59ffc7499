#include "kiln/ivshmem/event_loop.h"

#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>

#include "kiln/common/error.h"

namespace kiln::ivshmem {

EventLoop::EventLoop() {
  int fd = ::epoll_create1(EPOLL_CLOEXEC);
  if (fd < 0) throw system_error(errno, "cannot create an epoll instance");
  epoll_.reset(fd);
}

void EventLoop::add(int fd, uint32_t events, Handler handler) {
  uint32_t generation = next_generation_++;
  epoll_event event{};
  event.events = events;
  // The generation tells a stale event (fd closed and reused within one batch) from a live one.
  event.data.u64 = (static_cast<uint64_t>(generation) << 32) | static_cast<uint32_t>(fd);
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &event) < 0) {
    throw system_error(errno, "cannot watch descriptor {}", fd);
  }
  handlers_[fd] = Slot{generation, std::move(handler)};
}

void EventLoop::modify(int fd, uint32_t events) {
  auto it = handlers_.find(fd);
  if (it == handlers_.end()) return;
  epoll_event event{};
  event.events = events;
  event.data.u64 = (static_cast<uint64_t>(it->second.generation) << 32) | static_cast<uint32_t>(fd);
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &event) < 0) {
    throw system_error(errno, "cannot change the watch on descriptor {}", fd);
  }
}

void EventLoop::remove(int fd) {
  if (handlers_.erase(fd) == 0) return;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
}

int EventLoop::run_once(int timeout_ms) {
  epoll_event events[64];
  int count = ::epoll_wait(epoll_.get(), events, 64, timeout_ms);
  if (count < 0) {
    if (errno == EINTR) return 0;
    throw system_error(errno, "epoll_wait failed");
  }
  int dispatched = 0;
  for (int i = 0; i < count; ++i) {
    int fd = static_cast<int>(events[i].data.u64 & 0xffffffffu);
    auto generation = static_cast<uint32_t>(events[i].data.u64 >> 32);
    auto it = handlers_.find(fd);
    if (it == handlers_.end() || it->second.generation != generation) continue;
    // Copy: the handler may remove itself.
    Handler handler = it->second.handler;
    handler(events[i].events);
    ++dispatched;
  }
  return dispatched;
}

UniqueFd block_signals_into_fd(std::initializer_list<int> signals) {
  sigset_t set;
  sigemptyset(&set);
  for (int signal : signals) sigaddset(&set, signal);
  if (::sigprocmask(SIG_BLOCK, &set, nullptr) < 0) throw system_error(errno, "cannot block signals");
  int fd = ::signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  if (fd < 0) throw system_error(errno, "cannot create a signalfd");
  return UniqueFd(fd);
}

}  // namespace kiln::ivshmem
