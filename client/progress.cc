#include "client/progress.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/format.h"

namespace sinkscope::client {
namespace v1 = sinkscope::v1;

size_t TerminalWidth() {
  winsize w{};
  if (ioctl(STDERR_FILENO, TIOCGWINSZ, &w) == 0 && w.ws_col > 0) return w.ws_col;
  return 80;
}

std::string ProgressLine::Duration(double seconds) {
  const long s = static_cast<long>(seconds + 0.5);
  if (s >= 3600) return absl::StrFormat("%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  return absl::StrFormat("%ld:%02ld", s / 60, s % 60);
}

ProgressLine::ProgressLine(bool enabled, std::ostream& err, std::function<int()> poll_queue)
    : enabled_(enabled), err_(err), poll_queue_(std::move(poll_queue)) {
  if (!enabled_) return;
  ticker_ = std::thread([this] {
    std::unique_lock<std::mutex> lock(mu_);
    auto last_poll = std::chrono::steady_clock::now();
    while (!stop_) {
      cv_.wait_for(lock, std::chrono::milliseconds(500));
      if (stop_) break;
      if (!started_ && queue_position_ >= 0 && poll_queue_ &&
          std::chrono::steady_clock::now() - last_poll > std::chrono::seconds(2)) {
        last_poll = std::chrono::steady_clock::now();
        lock.unlock();
        const int pos = poll_queue_();  // an RPC: not under the lock
        lock.lock();
        if (!started_ && pos >= 0) queue_position_ = pos;
      }
      DrawLocked();
    }
  });
}

ProgressLine::~ProgressLine() {
  Done();
  if (ticker_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    ticker_.join();
  }
}

void ProgressLine::Update(const v1::JobEvent& ev) {
  std::lock_guard<std::mutex> lock(mu_);
  job_id_ = ev.job_id();
  switch (ev.event_case()) {
    case v1::JobEvent::kAccepted: queue_position_ = ev.accepted().queue_position(); break;
    case v1::JobEvent::kStarted:
      started_ = true;
      start_ = std::chrono::steady_clock::now();
      num_prompts_ = ev.started().num_prompts();
      break;
    case v1::JobEvent::kProgress: {
      const auto& p = ev.progress();
      if (!started_) {  // attached to a running job: the ETA counts from now
        started_ = true;
        start_ = std::chrono::steady_clock::now();
      }
      fraction_ = p.fraction();
      model_ = p.model();
      condition_ = p.condition();
      prompt_ = p.prompt();
      num_prompts_ = p.num_prompts();
      layer_ = p.layer();
      break;
    }
    default: break;
  }
  if (enabled_ && !done_) DrawLocked();
}

void ProgressLine::SetText(std::function<std::string()> text) {
  std::lock_guard<std::mutex> lock(mu_);
  text_ = std::move(text);
}

std::string ProgressLine::TextLocked() const {
  if (text_) return text_();
  if (!started_) {
    if (queue_position_ < 0) return absl::StrCat("job ", job_id_, ": waiting");
    return absl::StrCat("job ", job_id_, ": queued, position ", queue_position_);
  }
  std::string s = absl::StrFormat("[%3.0f%%]", 100 * fraction_);
  if (!model_.empty()) absl::StrAppend(&s, " ", model_);
  if (!condition_.empty()) absl::StrAppend(&s, " ", condition_);
  if (num_prompts_ > 0) absl::StrAppend(&s, " · prompt ", prompt_ + 1, "/", num_prompts_);
  if (layer_ >= 0) absl::StrAppend(&s, " · layer ", layer_);
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (fraction_ >= 0.02 && fraction_ < 1 && elapsed > 1)
    absl::StrAppend(&s, " · ETA ", Duration(elapsed * (1 - fraction_) / fraction_));
  else
    absl::StrAppend(&s, " · ", Duration(elapsed), " elapsed");
  return s;
}

std::string ProgressLine::Text() {
  std::lock_guard<std::mutex> lock(mu_);
  return TextLocked();
}

void ProgressLine::DrawLocked() {
  if (!enabled_ || done_) return;
  // Never longer than the terminal: a wrapped line cannot be erased with '\r'.
  err_ << "\r\033[K" << Clip(TextLocked(), TerminalWidth() - 1) << std::flush;
  drawn_ = true;
}

void ProgressLine::ClearLocked() {
  if (drawn_) err_ << "\r\033[K" << std::flush;
  drawn_ = false;
}

void ProgressLine::Around(const std::function<void()>& print) {
  std::lock_guard<std::mutex> lock(mu_);
  ClearLocked();
  print();
  if (enabled_ && !done_) DrawLocked();
}

void ProgressLine::Done() {
  std::lock_guard<std::mutex> lock(mu_);
  ClearLocked();
  done_ = true;
}

}  // namespace sinkscope::client
