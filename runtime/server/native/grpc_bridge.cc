// Native gRPC frontend: grpc++ does HTTP/2 and framing in C++ threads, Python does the rest.
//
// Why: on a 2-core edge host the Python grpc.aio stack alone costs ~400-550 us of CPU per
// request, a C++ grpc++ server with no model ~50-130 us (benchmarks/serve_bench.py measures
// both). This module is the thinnest bridge: it knows no .proto (AsyncGenericService moves
// bytes), and its completion-queue threads never touch Python. What they read is queued as
// an event and an eventfd is signalled; the asyncio loop drains the events (`poll`), parses
// the bytes with the tritonclient stubs, runs the same servicers as the grpc.aio frontend
// and answers:
//   unary calls:     Call.finish(bytes) or Call.abort(code, message), exactly once; a
//                    GONE event with the call's id says its caller left (cancelled, or
//                    past its deadline) before it was answered;
//   streaming calls: events MESSAGE (one per client message), END (client done sending)
//                    and GONE (the call is over: finished or cancelled by the client), keyed
//                    by a stream id; answers with Bridge.write(id, bytes) and, once,
//                    Bridge.finish(id, code, message). Writes are queued here, one in flight.
// Answers go to an outbox; Bridge.flush() wakes a completion-queue thread to send them.
// Why: grpc sends inline in the thread that starts an operation, and on the Python thread
// that held the GIL for ~30% of the event loop's time at concurrency 8 (py-spy: sendmsg
// under finish()).
#include <grpcpp/alarm.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

enum EventKind { kUnary = 0, kMessage = 1, kEnd = 2, kGone = 3 };

class Bridge;
class Call;

// Something a completion-queue tag points at.
class Tagged {
 public:
  virtual ~Tagged() = default;
  virtual void Proceed(bool ok) = 0;
};

enum class Op { kDone, kRead, kWrite, kFinish };

class OpTag : public Tagged {
 public:
  OpTag(Call* call, Op op) : call_(call), op_(op) {}
  void Proceed(bool ok) override;

 private:
  Call* call_;
  Op op_;
};

struct Event {
  Call* call;  // unary only; streams are addressed by id
  uint64_t id;
  EventKind kind;
  std::string method;
  std::string payload;
};

std::string Drain(grpc::ByteBuffer* buffer) {
  std::vector<grpc::Slice> slices;
  std::string body;
  if (buffer->Dump(&slices).ok()) {
    body.reserve(buffer->Length());
    for (const auto& s : slices) body.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  buffer->Clear();
  return body;
}

// One call. Unary: read one message, hand it over, answer once. Streaming: keep reading,
// hand each message over, write what Python sends, finish when Python says so. Deleted
// once grpc reports the call done and no operation of ours is pending.
class Call : public Tagged {
 public:
  Call(Bridge* bridge, grpc::AsyncGenericService* service, grpc::ServerCompletionQueue* cq)
      : bridge_(bridge), service_(service), cq_(cq), stream_(&ctx_),
        done_tag_(this, Op::kDone), read_tag_(this, Op::kRead), write_tag_(this, Op::kWrite),
        finish_tag_(this, Op::kFinish) {
    ctx_.AsyncNotifyWhenDone(&done_tag_);
    service_->RequestCall(&ctx_, &stream_, cq_, cq_, this);
  }

  void Proceed(bool ok) override;  // the call has arrived (completion-queue thread)
  void OnOp(Op op, bool ok);       // one of our operations completed (completion-queue thread)

  // Completion-queue thread (the outbox), under the bridge's ops lock.
  void Write(std::string body);
  void Finish(grpc::Status status);

  const std::string& method() const { return ctx_.method(); }
  std::string peer() const { return ctx_.peer(); }
  uint64_t id() const { return id_; }
  bool streaming() const { return streaming_; }

 private:
  void StartWrite();  // with mu_ held
  bool Finished();    // with mu_ held: may the call be deleted?

  Bridge* bridge_;
  grpc::AsyncGenericService* service_;
  grpc::ServerCompletionQueue* cq_;
  grpc::GenericServerContext ctx_;
  grpc::GenericServerAsyncReaderWriter stream_;
  grpc::ByteBuffer request_;
  grpc::ByteBuffer response_;
  OpTag done_tag_, read_tag_, write_tag_, finish_tag_;

  std::mutex mu_;
  uint64_t id_ = 0;
  bool streaming_ = false;
  int pending_ = 0;  // our operations in flight (read, write, finish)
  bool done_ = false;
  bool delivered_ = false;  // unary: handed to Python, which owes it an answer
  bool finish_requested_ = false;
  bool finish_started_ = false;
  bool write_failed_ = false;
  bool write_in_flight_ = false;
  grpc::Status status_;
  std::deque<std::string> writes_;
};

void OpTag::Proceed(bool ok) { call_->OnOp(op_, ok); }

// The outbox alarm's tag: fires on a completion-queue thread, which then runs the outbox.
class WakeTag : public Tagged {
 public:
  explicit WakeTag(Bridge* bridge) : bridge_(bridge) {}
  void Proceed(bool ok) override;

 private:
  Bridge* bridge_;
};

class Bridge {
 public:
  Bridge(std::string address, int max_message_bytes, int threads,
         std::vector<std::string> streaming)
      : address_(std::move(address)), max_message_bytes_(max_message_bytes),
        threads_(threads < 1 ? 1 : threads), streaming_(streaming.begin(), streaming.end()),
        wake_tag_(this) {
    efd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd_ < 0) throw std::runtime_error("eventfd failed");
  }

  ~Bridge() {
    Shutdown(0.0);
    if (efd_ >= 0) close(efd_);
  }

  int Start() {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort(address_, credentials_, &port);
    builder.SetMaxReceiveMessageSize(max_message_bytes_);
    builder.SetMaxSendMessageSize(max_message_bytes_);
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);  // a taken port is an error
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    builder.RegisterAsyncGenericService(&service_);
    for (int i = 0; i < threads_; i++) queues_.push_back(builder.AddCompletionQueue());
    server_ = builder.BuildAndStart();
    if (!server_ || port == 0) {
      server_.reset();
      throw std::runtime_error("the address is taken or not available");
    }
    for (auto& queue : queues_) {
      grpc::ServerCompletionQueue* cq = queue.get();
      workers_.emplace_back([this, cq] {
        for (int k = 0; k < kPendingPerQueue; k++) new Call(this, &service_, cq);
        void* tag;
        bool ok;
        while (cq->Next(&tag, &ok)) static_cast<Tagged*>(tag)->Proceed(ok);
      });
    }
    {
      std::lock_guard<std::mutex> lock(outbox_mu_);
      outbox_open_ = true;
    }
    return port;
  }

  int fileno() const { return efd_; }

  // Before Start: serve TLS from these PEM files (checked by Python first), re-read every
  // refresh_s seconds by grpc's file watcher, so rotated certificates apply without a
  // restart; mutual: clients must present a certificate the root file's CA signed.
  void UseTls(const std::string& cert, const std::string& key, const std::string& root,
              bool mutual, int refresh_s) {
    using grpc::experimental::FileWatcherCertificateProvider;
    auto provider = root.empty()
        ? std::make_shared<FileWatcherCertificateProvider>(key, cert, refresh_s)
        : std::make_shared<FileWatcherCertificateProvider>(key, cert, root, refresh_s);
    grpc::experimental::TlsServerCredentialsOptions options(provider);
    options.watch_identity_key_cert_pairs();
    if (!root.empty()) options.watch_root_certs();
    options.set_cert_request_type(mutual
        ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
        : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    credentials_ = grpc::experimental::TlsServerCredentials(options);
  }

  // Before Start: calls to `method` must carry metadata header: value (tritonserver's
  // restricted protocols); else they are answered UNAVAILABLE before Python sees them.
  void Restrict(const std::string& method, const std::string& header, const std::string& value) {
    restricted_[method] = {header, value};
  }

  // Completion-queue thread: the header a call lacks, or nullptr when it may proceed.
  const std::string* Refused(const grpc::GenericServerContext& ctx) const {
    auto rule = restricted_.find(ctx.method());
    if (rule == restricted_.end()) return nullptr;
    const auto& metadata = ctx.client_metadata();
    auto sent = metadata.find(rule->second.first);
    if (sent != metadata.end() &&
        std::string(sent->second.data(), sent->second.size()) == rule->second.second) {
      return nullptr;
    }
    return &rule->second.first;
  }
  bool IsStreaming(const std::string& method) const { return streaming_.count(method) > 0; }

  // Every call gets an id; streams are also registered, as Python addresses them by id.
  uint64_t Register(Call* call, bool streaming) {
    std::lock_guard<std::mutex> lock(ops_mu_);
    uint64_t id = ++last_id_;
    if (streaming) streams_[id] = call;
    return id;
  }

  // Completion-queue thread, ops lock held: a finished stream can no longer be reached.
  void UnregisterLocked(uint64_t id) { streams_.erase(id); }

  std::mutex& ops_mu() { return ops_mu_; }

  // Completion-queue thread: hand an event to Python.
  void Push(Event event) {
    {
      std::lock_guard<std::mutex> lock(queue_mu_);
      ready_.push_back(std::move(event));
    }
    uint64_t one = 1;
    ssize_t written = write(efd_, &one, sizeof one);
    (void)written;  // NOTE: only fails when the counter would overflow; a wakeup is pending then
  }

  py::list Poll();

  using Answer = std::function<void()>;

  // Python thread: queue an answer for a completion-queue thread. Python calls flush() once
  // it has queued what it can answer now, so one wakeup carries a batch of answers.
  void Post(Answer answer) {
    std::lock_guard<std::mutex> lock(outbox_mu_);
    if (outbox_open_) outbox_.push_back(std::move(answer));  // else not started, or stopping
  }

  // Python thread: wake a completion-queue thread to run the outbox. Takes no lock those
  // threads hold while sending, so Python never waits on a send with the GIL held.
  void Flush() {
    std::lock_guard<std::mutex> lock(outbox_mu_);
    if (!outbox_open_ || outbox_.empty() || wake_pending_) return;
    wake_pending_ = true;
    // NOTE: a deadline in the past fires at once; "now" is rounded up to the next ms by grpc
    wake_.Set(queues_.front().get(), gpr_inf_past(GPR_CLOCK_MONOTONIC), &wake_tag_);
  }

  // Completion-queue thread: run what Python answered, in order, under the ops lock.
  void RunOutbox() {
    std::vector<Answer> answers;
    {
      std::lock_guard<std::mutex> lock(outbox_mu_);
      answers.swap(outbox_);
      wake_pending_ = false;
    }
    std::lock_guard<std::mutex> ops(ops_mu_);
    if (closed_) return;
    for (Answer& answer : answers) answer();
  }

  void WriteStream(uint64_t id, py::bytes body) {
    Post([this, id, data = std::string(body)]() mutable {
      auto it = streams_.find(id);
      if (it != streams_.end()) it->second->Write(std::move(data));  // else over: drop
    });
  }

  void FinishStream(uint64_t id, int code, const std::string& message) {
    grpc::Status status(static_cast<grpc::StatusCode>(code), message);
    Post([this, id, status] {
      auto it = streams_.find(id);
      if (it != streams_.end()) it->second->Finish(status);
    });
  }

  void Shutdown(double grace_s) {
    if (!server_) return;
    Flush();  // answers queued and not yet flushed still go out
    {
      py::gil_scoped_release release;
      auto deadline = std::chrono::system_clock::now() +
                      std::chrono::milliseconds(static_cast<int64_t>(grace_s * 1000));
      server_->Shutdown(deadline);  // waits for answers until the deadline, then cancels
      {
        std::lock_guard<std::mutex> lock(ops_mu_);
        closed_ = true;
      }
      {
        std::lock_guard<std::mutex> lock(outbox_mu_);
        outbox_open_ = false;  // NOTE: an alarm must not be set on a queue shutting down
      }
      for (auto& queue : queues_) queue->Shutdown();
      for (auto& worker : workers_) worker.join();
    }
    workers_.clear();
    server_.reset();
    std::lock_guard<std::mutex> lock(queue_mu_);
    ready_.clear();  // NOTE: calls still in here are abandoned at exit, never freed
  }

 private:
  static constexpr int kPendingPerQueue = 32;
  std::string address_;
  int max_message_bytes_;
  int threads_;
  std::set<std::string> streaming_;
  int efd_ = -1;
  std::shared_ptr<grpc::ServerCredentials> credentials_ = grpc::InsecureServerCredentials();
  std::map<std::string, std::pair<std::string, std::string>> restricted_;
  grpc::AsyncGenericService service_;
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues_;
  std::vector<std::thread> workers_;
  std::mutex queue_mu_;
  std::deque<Event> ready_;
  std::mutex ops_mu_;  // Python-side operations vs stream deletion and shutdown
  std::map<uint64_t, Call*> streams_;
  uint64_t last_id_ = 0;
  bool closed_ = false;
  std::mutex outbox_mu_;
  std::vector<Answer> outbox_;
  bool wake_pending_ = false;
  bool outbox_open_ = false;
  grpc::Alarm wake_;
  WakeTag wake_tag_;
};

void WakeTag::Proceed(bool) { bridge_->RunOutbox(); }

// What Python holds for a unary call: answer it once; later answers are ignored.
class CallHandle {
 public:
  CallHandle(Bridge* bridge, Call* call, std::string method, std::string peer)
      : method_(std::move(method)), peer_(std::move(peer)), bridge_(bridge), call_(call) {}

  void Finish(py::bytes body) {
    if (call_ == nullptr) return;
    Call* call = call_;
    call_ = nullptr;
    bridge_->Post([call, data = std::string(body)]() mutable { call->Write(std::move(data)); });
  }

  void Abort(int code, const std::string& message) {
    if (call_ == nullptr) return;
    Call* call = call_;
    call_ = nullptr;
    grpc::Status status(static_cast<grpc::StatusCode>(code), message);
    bridge_->Post([call, status] { call->Finish(status); });
  }

  std::string method() const { return method_; }
  std::string peer() const { return peer_; }
  bool answered() const { return call_ == nullptr; }

 private:
  std::string method_;
  std::string peer_;
  Bridge* bridge_;
  Call* call_;
};

py::list Bridge::Poll() {
  uint64_t count;
  ssize_t got = read(efd_, &count, sizeof count);  // NOTE: before the swap; see Push
  (void)got;
  std::deque<Event> ready;
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    ready.swap(ready_);
  }
  py::list out;
  for (Event& e : ready) {
    py::object handle = py::none();
    if (e.kind == kUnary) {
      handle = py::cast(std::make_unique<CallHandle>(this, e.call, e.method, e.call->peer()));
    }
    py::object payload = py::none();
    if (e.kind == kUnary || e.kind == kMessage) payload = py::bytes(e.payload);
    out.append(py::make_tuple(handle, py::str(e.method), payload, static_cast<int>(e.kind), e.id));
  }
  return out;
}

void Call::Proceed(bool ok) {
  if (!ok) {  // the queue is shutting down before this call arrived (no done tag then)
    delete this;
    return;
  }
  new Call(bridge_, service_, cq_);
  if (const std::string* header = bridge_->Refused(ctx_)) {  // answered here, never delivered
    std::lock_guard<std::mutex> lock(mu_);
    finish_requested_ = finish_started_ = true;
    pending_++;
    stream_.Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                "This protocol is restricted, expecting header '" + *header + "'"),
                   &finish_tag_);
    return;
  }
  // NOTE: registered before mu_ is taken: the lock order is ops lock, then mu_
  bool streaming = bridge_->IsStreaming(ctx_.method());
  uint64_t id = bridge_->Register(this, streaming);
  std::lock_guard<std::mutex> lock(mu_);
  streaming_ = streaming;
  id_ = id;
  pending_++;
  stream_.Read(&request_, &read_tag_);
}

void Call::OnOp(Op op, bool ok) {
  bool remove = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    switch (op) {
      case Op::kDone:
        done_ = true;
        // NOTE: a unary call answered normally is done too; only an unanswered one is news
        if (streaming_ || (delivered_ && !finish_requested_)) {
          bridge_->Push({nullptr, id_, kGone, ctx_.method(), {}});
        }
        break;
      case Op::kRead:
        pending_--;
        if (!streaming_) {
          if (ok) {
            delivered_ = true;
            bridge_->Push({this, id_, kUnary, ctx_.method(), Drain(&request_)});
          } else if (!finish_started_) {  // the client went away before its message
            finish_started_ = true;
            pending_++;
            stream_.Finish(grpc::Status(grpc::StatusCode::CANCELLED, "no request message"),
                           &finish_tag_);
          }
        } else if (ok) {
          bridge_->Push({nullptr, id_, kMessage, ctx_.method(), Drain(&request_)});
          pending_++;
          stream_.Read(&request_, &read_tag_);
        } else {
          bridge_->Push({nullptr, id_, kEnd, ctx_.method(), {}});
        }
        break;
      case Op::kWrite:
        pending_--;
        write_in_flight_ = false;
        if (!ok) {
          write_failed_ = true;
          writes_.clear();
        }
        StartWrite();
        break;
      case Op::kFinish:
        pending_--;
        break;
    }
    remove = Finished();
  }
  if (!remove) return;
  if (streaming_) {
    // NOTE: the ops lock is Python's only way in: re-check and unregister under it
    std::lock_guard<std::mutex> ops(bridge_->ops_mu());
    std::lock_guard<std::mutex> lock(mu_);
    if (!Finished()) return;
    bridge_->UnregisterLocked(id_);
  }
  delete this;
}

bool Call::Finished() { return done_ && pending_ == 0 && finish_started_; }

void Call::Write(std::string body) {
  std::lock_guard<std::mutex> lock(mu_);
  if (finish_requested_ || write_failed_) return;
  if (!streaming_) {  // a unary answer: message and OK status in one operation
    finish_requested_ = finish_started_ = true;
    grpc::Slice slice(body);
    response_ = grpc::ByteBuffer(&slice, 1);
    pending_++;
    stream_.WriteAndFinish(response_, grpc::WriteOptions(), grpc::Status::OK, &finish_tag_);
    return;
  }
  writes_.push_back(std::move(body));
  StartWrite();
}

void Call::Finish(grpc::Status status) {
  std::lock_guard<std::mutex> lock(mu_);
  if (finish_requested_) return;
  finish_requested_ = true;
  status_ = std::move(status);
  StartWrite();
}

void Call::StartWrite() {
  if (write_in_flight_ || finish_started_) return;
  if (!writes_.empty()) {
    grpc::Slice slice(writes_.front());
    writes_.pop_front();
    response_ = grpc::ByteBuffer(&slice, 1);
    write_in_flight_ = true;
    pending_++;
    stream_.Write(response_, &write_tag_);
  } else if (finish_requested_) {
    finish_started_ = true;
    pending_++;
    stream_.Finish(status_, &finish_tag_);
  }
}

}  // namespace

PYBIND11_MODULE(_grpc_bridge, m) {
  m.doc() = "grpc++ server that hands calls to Python through an eventfd queue";
  m.attr("UNARY") = static_cast<int>(kUnary);
  m.attr("MESSAGE") = static_cast<int>(kMessage);
  m.attr("END") = static_cast<int>(kEnd);
  m.attr("GONE") = static_cast<int>(kGone);
  py::class_<CallHandle>(m, "Call")
      .def("finish", &CallHandle::Finish, py::arg("response"))
      .def("abort", &CallHandle::Abort, py::arg("code"), py::arg("message"))
      .def_property_readonly("method", &CallHandle::method)
      .def_property_readonly("peer", &CallHandle::peer)
      .def_property_readonly("answered", &CallHandle::answered);
  py::class_<Bridge>(m, "Bridge")
      .def(py::init<std::string, int, int, std::vector<std::string>>(), py::arg("address"),
           py::arg("max_message_bytes"), py::arg("threads") = 1,
           py::arg("streaming") = std::vector<std::string>())
      .def("use_tls", &Bridge::UseTls, py::arg("cert"), py::arg("key"), py::arg("root"),
           py::arg("mutual"), py::arg("refresh_s"))
      .def("restrict", &Bridge::Restrict, py::arg("method"), py::arg("header"),
           py::arg("value"))
      .def("start", &Bridge::Start)
      .def("fileno", &Bridge::fileno)
      .def("poll", &Bridge::Poll)
      .def("write", &Bridge::WriteStream, py::arg("stream_id"), py::arg("response"))
      .def("finish", &Bridge::FinishStream, py::arg("stream_id"), py::arg("code"),
           py::arg("message"))
      .def("flush", &Bridge::Flush)
      .def("shutdown", &Bridge::Shutdown, py::arg("grace_s"));
}
