#include "client/batch_runner.h"

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/batch_report.h"
#include "client/interrupt.h"

namespace sinkscope::client {
namespace v1 = sinkscope::v1;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

Client& BatchRunner::ClientFor(const std::string& target, const std::string& tls_name) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& c = clients_[target];
  if (!c) c = std::make_unique<Client>(cred_, target, tls_name);
  return *c;
}

void BatchRunner::SaveLocked() {
  if (auto st = SaveManifest(ManifestPath(), m_); !st.ok()) std::cerr << "sinkscope: batch: " << st.message() << "\n";
}

void BatchRunner::Say(const std::string& line) {
  if (!o_.quiet) progress_.Around([&] { std::cerr << line << "\n"; });
}

std::string BatchRunner::StatusText() {
  std::lock_guard<std::mutex> lock(mu_);
  int done = 0, failed = 0, running = 0;
  for (const auto& e : m_.jobs) {
    done += IsTerminal(e.state);
    failed += e.state == "FAILED" || e.state == "CANCELLED" || e.state == "LOST";
    running += e.state == "QUEUED" || e.state == "RUNNING" || e.state == "SUBMITTING";
  }
  const double el = std::chrono::duration<double>(Clock::now() - start_).count();
  return absl::StrCat("batch: ", done, "/", m_.jobs.size(), " done · ", running, " in flight · ", failed, " failed · ",
                      ProgressLine::Duration(el), " elapsed");
}

// Matches the manifest to the jobs file and decides, per job, what this run does.
void BatchRunner::Plan() {
  std::map<std::string, ManifestEntry> old;
  for (auto& e : m_.jobs) old[e.name] = e;
  m_.jobs.clear();
  for (size_t i = 0; i < jobs_.size(); ++i) {
    ManifestEntry e;
    e.name = jobs_[i].name;
    e.fingerprint = Fingerprint(jobs_[i].spec);
    Action a = Action::kSubmit;
    auto it = old.find(e.name);
    if (it != old.end() && it->second.fingerprint == e.fingerprint) {
      e = it->second;
      if (e.state == "SUCCEEDED" && fs::exists(EventsPath(i))) {
        a = Action::kNone;
        ++skipped_;
      } else if (!e.job_id.empty() && !IsTerminal(e.state)) {
        a = Action::kAttach;
      } else if (e.state == "FAILED" || e.state == "CANCELLED" || e.state == "SUCCEEDED") {
        ++e.attempt;  // a new submission, with a new idempotency key
        e.job_id.clear();
        e.server.clear();
        e.state = "PENDING";
      }  // PENDING and SUBMITTING: submit (SUBMITTING to the same server, with the same key)
      e.error.clear();
      e.error_code = 0;
    }
    m_.jobs.push_back(e);
    action_.push_back(a);
  }
  std::lock_guard<std::mutex> lock(mu_);
  SaveLocked();
}

const Replica* BatchRunner::PickReplica(const std::string& avoid) {
  const Replica* best = nullptr;
  const auto now = Clock::now();
  for (const auto& r : replicas_) {
    if (r.target == avoid && replicas_.size() > 1) continue;
    if (down_until_.count(r.target) && down_until_[r.target] > now) continue;
    if (!best || inflight_[r.target] < inflight_[best->target]) best = &r;
  }
  return best;
}

bool BatchRunner::Submit(size_t i) {
  v1::SubmitJobRequest req;
  *req.mutable_spec() = jobs_[i].spec;
  if (req.spec().label().empty()) req.mutable_spec()->set_label("batch:" + jobs_[i].name);
  std::string avoid;
  for (int tries = 0; !stopping_; ++tries) {
    std::string target, tls_name;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ManifestEntry& e = m_.jobs[i];
      if (e.state != "SUBMITTING" || e.server.empty()) {
        const Replica* r = PickReplica(avoid);
        if (!r) {
          e.state = "FAILED";
          e.error_code = static_cast<int>(grpc::StatusCode::UNAVAILABLE);
          e.error = "no server reachable";
          SaveLocked();
          return false;
        }
        e.server = r->target;
        e.tls_name = r->tls_name;
        e.state = "SUBMITTING";
        SaveLocked();  // before the call: a crash now resubmits to this server with the same key
      }
      target = e.server;
      tls_name = e.tls_name;
      // One key per (batch directory, job, content, attempt): a resubmission after a crash returns the same job.
      req.set_idempotency_key(absl::StrCat("sinkscope-batch:", fs::absolute(o_.out_dir).string(), ":", e.name, ":",
                                           e.fingerprint, ":", e.attempt));
    }
    Client& c = ClientFor(target, tls_name);
    grpc::ClientContext ctx;
    c.Prepare(&ctx);
    v1::SubmitJobResponse resp;
    const grpc::Status st = c.stub().SubmitJob(&ctx, req, &resp);
    std::lock_guard<std::mutex> lock(mu_);
    ManifestEntry& e = m_.jobs[i];
    if (st.ok()) {
      e.job_id = resp.job_id();
      e.state = "QUEUED";
      SaveLocked();
      return true;
    }
    const auto code = st.error_code();
    if ((code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::RESOURCE_EXHAUSTED) && tries < 60) {
      // This replica is down or its queue is full: try another (or this one again, later).
      down_until_[target] = Clock::now() + std::chrono::seconds(code == grpc::StatusCode::UNAVAILABLE ? 10 : 2);
      avoid = target;
      e.state = "PENDING";
      e.server.clear();
      SaveLocked();
      mu_.unlock();
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      mu_.lock();
      continue;
    }
    e.state = "FAILED";
    e.error_code = static_cast<int>(code);
    e.error = absl::StrCat("rejected by ", target, ": ", st.error_message());
    SaveLocked();
    return false;
  }
  return false;
}

Client& BatchRunner::JobClient(size_t i, std::string* job_id) {
  std::string target, tls_name;
  {
    std::lock_guard<std::mutex> lock(mu_);
    target = m_.jobs[i].server;
    tls_name = m_.jobs[i].tls_name;
    *job_id = m_.jobs[i].job_id;
  }
  return ClientFor(target, tls_name);
}

grpc::Status BatchRunner::Stream(size_t i) {
  std::string id;
  Client& c = JobClient(i, &id);
  grpc::ClientContext ctx;
  c.Prepare(&ctx, /*deadline=*/false);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return grpc::Status(grpc::StatusCode::CANCELLED, "interrupted");
    active_.insert(&ctx);
  }
  v1::StreamJobRequest req;
  req.set_job_id(id);
  std::ofstream events(EventsPath(i), std::ios::trunc);  // replayed from seq 0: the file is rewritten whole
  std::ofstream csv(CsvPath(i), std::ios::trunc);
  csv << LongCsvHeader() << "\n";
  Flattener flat;
  auto reader = c.stub().StreamJob(&ctx, req);
  v1::JobEvent ev;
  bool finished = false;
  while (reader->Read(&ev)) {
    events << ToJson(ev) << "\n";
    for (const Record& r : flat.Flatten(ev)) {
      std::vector<std::string> f = LongCsvFields(ev.job_id(), r);
      for (auto& x : f) x = CsvField(x);
      csv << absl::StrJoin(f, ",") << "\n";
    }
    std::lock_guard<std::mutex> lock(mu_);
    ManifestEntry& e = m_.jobs[i];
    if (ev.has_started() && e.state != "RUNNING") {
      e.state = "RUNNING";
      SaveLocked();
    }
    if (ev.has_finished()) {
      finished = true;
      e.state = StateName(ev.finished().state());
      e.error_code = ev.finished().error().code();
      e.error = ev.finished().error().message();
      SaveLocked();
    }
  }
  events.flush();
  csv.flush();
  const grpc::Status st = reader->Finish();
  std::lock_guard<std::mutex> lock(mu_);
  active_.erase(&ctx);
  if (finished) return grpc::Status::OK;
  return st.ok() ? grpc::Status(grpc::StatusCode::UNKNOWN, "stream ended without a Finished event") : st;
}

void BatchRunner::Process(size_t i) {
  const auto t0 = Clock::now();
  std::string target;
  if (action_[i] == Action::kSubmit && !Submit(i)) {
    std::string line;
    {
      std::lock_guard<std::mutex> lock(mu_);
      line = absl::StrFormat("%-24s %-10s %s", jobs_[i].name, m_.jobs[i].state, m_.jobs[i].error);
    }
    if (!stopping_) Say(line);  // never under mu_: the status line's ticker takes mu_ under its own lock
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    target = m_.jobs[i].server;
    ++inflight_[target];
  }
  grpc::Status st;
  for (int attempt = 0;; ++attempt) {
    st = Stream(i);
    if (st.ok() || stopping_) break;
    if (st.error_code() == grpc::StatusCode::NOT_FOUND) {  // the server forgot the job (restarted): submit again
      {
        std::lock_guard<std::mutex> lock(mu_);
        --inflight_[target];
        ManifestEntry& e = m_.jobs[i];
        ++e.attempt;
        e.job_id.clear();
        e.server.clear();
        e.state = "PENDING";
      }
      action_[i] = Action::kSubmit;
      return Process(i);
    }
    if (attempt >= 3) break;
    std::this_thread::sleep_for(std::chrono::seconds(2));  // a transient disconnect: re-attach
  }
  std::string line;
  {
    std::lock_guard<std::mutex> lock(mu_);
    --inflight_[target];
    ManifestEntry& e = m_.jobs[i];
    e.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!st.ok() && !stopping_) {
      e.state = "LOST";
      e.error_code = static_cast<int>(st.error_code());
      e.error = absl::StrCat("lost contact with ", target, ": ", st.error_message(), " (a rerun re-attaches)");
    }
    SaveLocked();
    if (!stopping_ || IsTerminal(e.state))
      line = absl::StrFormat("%-24s %-10s %s %s %.1f s%s", e.name, e.state, e.server, e.job_id, e.seconds,
                             e.error.empty() ? "" : "  " + e.error);
  }
  if (!line.empty()) Say(line);
}

void BatchRunner::Worker() {
  for (;;) {
    size_t i;
    {
      std::lock_guard<std::mutex> lock(mu_);
      while (next_ < jobs_.size() && action_[next_] == Action::kNone) ++next_;
      if (stopping_ || next_ >= jobs_.size()) return;
      i = next_++;
    }
    Process(i);
  }
}

void BatchRunner::CancelSubmitted() {
  std::vector<size_t> todo;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < m_.jobs.size(); ++i)
      if (!m_.jobs[i].job_id.empty() && !IsTerminal(m_.jobs[i].state)) todo.push_back(i);
  }
  for (size_t i : todo) {
    std::string id;
    Client& c = JobClient(i, &id);
    grpc::ClientContext ctx;
    c.Prepare(&ctx);
    v1::CancelJobRequest req;
    req.set_job_id(id);
    v1::CancelJobResponse resp;
    const grpc::Status st = c.stub().CancelJob(&ctx, req, &resp);
    std::lock_guard<std::mutex> lock(mu_);
    if (st.ok())
      m_.jobs[i].state = StateName(resp.state());
    else
      m_.jobs[i].error = "cancel failed: " + st.error_message();
  }
}

int BatchRunner::Run() {
  Plan();
  progress_.SetText([this] { return StatusText(); });
  SetInterruptHandler([this](int n) {
    if (n > 1) {
      progress_.Done();
      std::cerr << "sinkscope: batch: interrupted again; exiting (rerun to resume)\n";
      std::_Exit(kExitCancelled);
    }
    progress_.Around([&] {
      std::cerr << "sinkscope: batch: interrupted; "
                << (o_.detach ? "leaving submitted jobs running (rerun to re-attach)" : "cancelling submitted jobs")
                << " (Ctrl-C again to exit now)\n";
    });
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    for (auto* ctx : active_) ctx->TryCancel();
  });
  const int n = o_.concurrency > 0 ? o_.concurrency : static_cast<int>(2 * replicas_.size());
  std::vector<std::thread> workers;
  for (int k = 0; k < n; ++k) workers.emplace_back([this] { Worker(); });
  for (auto& w : workers) w.join();
  if (stopping_ && !o_.detach) CancelSubmitted();
  SetInterruptHandler({});
  progress_.Done();
  {
    std::lock_guard<std::mutex> lock(mu_);
    SaveLocked();
  }
  std::vector<std::string> names;
  for (const auto& j : jobs_) names.push_back(j.name);
  WriteCombinedCsv(o_.out_dir, names, o_.render.wide);
  return PrintBatchSummary(m_, BatchReport{o_.out_dir, ManifestPath(), o_.render, skipped_, stopping_});
}

}  // namespace sinkscope::client
