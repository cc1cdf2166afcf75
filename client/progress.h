// The one-line progress display on stderr: queue position while queued, then model, condition, layer, prompt k/n,
// percentage and ETA. Drawn only for a person (stderr is a terminal and no --quiet); cleared before any other
// output and when the job ends, so nothing of it stays on screen. Thread-safe: a ticker redraws it every 0.5 s.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <ostream>
#include <string>
#include <thread>

#include "sinkscope/v1/jobs.pb.h"

namespace sinkscope::client {

class ProgressLine {
 public:
  // `poll_queue` (may be empty) returns the job's queue position, or -1 once it left the queue; the ticker calls it
  // every 2 s while the job is queued.
  ProgressLine(bool enabled, std::ostream& err, std::function<int()> poll_queue = {});
  ~ProgressLine();  // stops the ticker and clears the line

  bool enabled() const { return enabled_; }
  // Records what an event says about progress and redraws.
  void Update(const sinkscope::v1::JobEvent& ev);
  // Runs `print` (which writes ordinary output) with the line cleared, then redraws the line.
  void Around(const std::function<void()>& print);
  // Clears the line for good (at the end of a job).
  void Done();
  // The text the line would show now (for tests).
  std::string Text();
  // Replaces the job text with `text()` (the batch's "12/50 done · 4 running" line); called under the line's lock.
  void SetText(std::function<std::string()> text);

  // Formats "1:05" / "1:02:03" for an ETA.
  static std::string Duration(double seconds);

 private:
  void DrawLocked();
  void ClearLocked();
  std::string TextLocked() const;

  bool enabled_;
  std::ostream& err_;
  std::function<int()> poll_queue_;
  std::function<std::string()> text_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool done_ = false;
  bool drawn_ = false;
  std::thread ticker_;
  // progress state
  std::string job_id_;
  int queue_position_ = -1;
  bool started_ = false;
  std::chrono::steady_clock::time_point start_;
  double fraction_ = 0;
  std::string model_, condition_;
  int prompt_ = 0, num_prompts_ = 0, layer_ = -1;
};

// Terminal width of stderr (80 when unknown).
size_t TerminalWidth();

}  // namespace sinkscope::client
