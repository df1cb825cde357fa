// Native gRPC frontend: grpc++ does HTTP/2 and framing in C++ threads, Python does the rest.
// (The same module serves KServe v2 HTTP/REST on the native lanes: see http_front.h.)
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
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "json_lite.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <unordered_map>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

// kFailed: a request the native lane answered with an error (queue full, cancelled while
// queued): Python counts it against the model (id: lane id, method: reason, payload: ns).
// kOpen: a stream whose first message a native lane took (Python serves the stream's end).
enum EventKind { kUnary = 0, kMessage = 1, kEnd = 2, kGone = 3, kFailed = 4, kOpen = 5 };

class Bridge;
class Call;
class HttpFront;
class Lane;
struct Pending;

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

  // Completion-queue thread: the native lane took this call (it answers it, not Python).
  void SetLane(std::shared_ptr<Lane> lane) {
    std::lock_guard<std::mutex> lock(mu_);
    lane_ = std::move(lane);
  }
  // ModelStreamInfer, completion-queue thread: an answer slot for a message a native lane
  // takes, in order with the Python path's answers (false: Python finished the stream).
  bool AddLaneSlot(std::shared_ptr<Lane> lane, uint64_t* slot);
  void DropLaneSlot(uint64_t slot);  // the lane did not take it after all (the last slot)
  // Outbox (ops lock): a lane's answer for its slot; empty `skip`: none (cancelled).
  void FillLane(uint64_t slot, std::string body, bool skip);
  // Completion-queue thread: Python gets this message; its next answer fills this slot.
  void AddPythonSlot();
  // Has the call ended (answered, cancelled by its client, or past its deadline)?
  bool Gone() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }

 private:
  void StartWrite();  // with mu_ held
  void MoveSlots();   // with mu_ held: answers whose turn has come go to the writes
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
  std::shared_ptr<Lane> lane_;  // set when a native lane answers this call
  // Streams: answers in message order, whichever path answers (see AddLaneSlot).
  struct Slot {
    uint64_t id;
    bool lane;
    bool filled;
    std::string body;  // empty once filled: nothing to send (skipped)
  };
  std::deque<Slot> slots_;
  uint64_t last_slot_ = 0;
  int lane_pending_ = 0;  // slots a lane still owes (the call lives until they are filled)
  bool ordered_ = false;    // ModelStreamInfer: one answer per message, in order
  bool announced_ = false;  // Python knows of this stream
  std::vector<std::shared_ptr<Lane>> stream_lanes_;  // lanes holding this stream's messages
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
    // NOTE: a header may be sent more than once; any matching value lets the call in, as
    // the Python path's `refusal` does
    auto [first, last] = metadata.equal_range(rule->second.first);
    for (auto sent = first; sent != last; ++sent) {
      if (std::string(sent->second.data(), sent->second.size()) == rule->second.second) {
        return nullptr;
      }
    }
    return &rule->second.first;
  }
  int max_message_bytes() const { return max_message_bytes_; }

  // Native lanes (see Lane): one per model name that Python registered for the native path.
  std::shared_ptr<Lane> AddLane(py::str name, py::str version, py::list inputs,
                                std::vector<std::string> outputs, int max_rows, int64_t delay_us,
                                int target_rows, int64_t max_queue);
  void RemoveLane(Lane* lane);
  // Python says whether new requests may take the native path at all (not while stopping).
  void SetFast(bool on) {
    std::lock_guard<std::mutex> lock(lanes_mu_);
    fast_ = on;
  }
  // The lane serving this model now, or null (none, or not while stopping).
  std::shared_ptr<Lane> LaneFor(const std::string& model);
  // Completion-queue thread: a lane takes this ModelInfer call (true), or Python gets it.
  bool TryFast(Call* call, std::string& body);
  bool TakeFast(Call* call, std::string& body);
  // An HTTP connection's thread: a lane takes this binary infer request (true: its answer
  // comes through p->http), or it goes to the Python frontend (p untouched).
  bool TakeHttp(std::unique_ptr<Pending>& p);
  // KServe v2 HTTP on host:port (see http_front.h): binary infers for lanes served here,
  // the rest forwarded to the Python frontend's aiohttp on the Unix socket `upstream`.
  int ServeHttp(const std::string& host, int port, const std::string& upstream,
                uint64_t max_body, const std::string& restrict_header,
                const std::string& restrict_value);
  // HTTP infer requests served natively, and forwarded to aiohttp.
  std::pair<uint64_t, uint64_t> HttpCounts() const;
  void StopHttp();
  // ModelInfer calls taken by a native lane, and left to Python (for tests and benchmarks)
  std::pair<uint64_t, uint64_t> InferCounts() const { return {native_infers_, python_infers_}; }

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
    StopHttp();
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
  std::mutex lanes_mu_;
  std::unordered_map<std::string, std::shared_ptr<Lane>> lanes_;
  uint64_t last_lane_id_ = 0;
  bool fast_ = true;
  std::atomic<uint64_t> native_infers_{0}, python_infers_{0};
  std::shared_ptr<HttpFront> http_;
};

void WakeTag::Proceed(bool) { bridge_->RunOutbox(); }

// ---- The native inference lane ------------------------------------------------------------
// Why: with the bytes-only bridge, every request still cost ~100 us of Python on the event
// loop (parse, validate, queue, future, encode, answer); the engine thread waited on it.
// For a model Python registers (batched, dynamic batching, fixed-size datatypes, no queue
// timeouts), a ModelInfer request is parsed here with a small protobuf wire reader, checked
// against the model's inputs and queued per model; Python engine threads (one per instance)
// take one batch per call as numpy arrays over contiguous buffers, run the engine and hand
// the outputs back; the responses are written here. Whatever this path does not take exactly
// as the Python path would (any validation failure, input or output parameters, typed
// contents other than FP32/FP64/INT32/INT64, classes, shared memory, a `timeout` parameter, an unknown model or version) goes
// to Python untouched, which answers it with Triton's status and wording, and so does a
// request that finds the lane's queue full (the Python batcher counts this queue in the
// model's limit). Only two answers come from here:
// CANCELLED when a caller leaves while queued, and what Python says.

int64_t NowNs() {
  // NOTE: steady_clock is CLOCK_MONOTONIC, as Python's time.perf_counter_ns
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Protobuf wire format, just what a ModelInferRequest needs; every failure means "fall back".
constexpr uint64_t kMaxFieldNumber = (uint64_t(1) << 29) - 1;
// NOTE: the lane's models have a few inputs and outputs of a few dims; past these caps a
// request goes to the Python path before the parser allocates per entry (a body of empty
// input entries, 2 bytes each, would otherwise ask ~100 GB on the completion-queue thread)
constexpr size_t kMaxTensors = 64;
constexpr size_t kMaxDims = 64;

class WireReader {
 public:
  WireReader(const uint8_t* p, size_t n) : p_(p), end_(p + n) {}
  bool done() const { return p_ >= end_; }
  bool Varint(uint64_t* out) {
    uint64_t value = 0;
    for (int shift = 0; shift < 64 && p_ < end_; shift += 7) {
      uint8_t b = *p_++;
      value |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) {
        *out = value;
        return true;
      }
    }
    return false;
  }
  // One field: its number and wire type; a varint's value, or a length-delimited span.
  struct Field {
    uint32_t number = 0;
    int type = 0;
    uint64_t value = 0;
    const uint8_t* data = nullptr;
    size_t len = 0;
  };
  bool Next(Field* f) {
    *f = Field();
    uint64_t key;
    if (!Varint(&key)) return false;
    // NOTE: field numbers end at 2^29-1; a wider one must not wrap onto a known field
    if ((key >> 3) > kMaxFieldNumber) return false;
    f->number = static_cast<uint32_t>(key >> 3);
    f->type = static_cast<int>(key & 7);
    if (f->number == 0) return false;
    switch (f->type) {
      case 0:
        return Varint(&f->value);
      case 1:
      case 5: {
        size_t width = f->type == 1 ? 8 : 4;
        if (static_cast<size_t>(end_ - p_) < width) return false;
        f->data = p_;
        f->len = width;
        p_ += width;
        return true;
      }
      case 2: {
        uint64_t n;
        if (!Varint(&n) || n > static_cast<uint64_t>(end_ - p_)) return false;
        f->data = p_;
        f->len = static_cast<size_t>(n);
        p_ += n;
        return true;
      }
      default:
        return false;
    }
  }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

struct InputView {
  std::string name, datatype;
  std::vector<int64_t> shape;
  bool has_contents = false;
  size_t contents_offset = 0, contents_len = 0;  // typed contents, in the request bytes
};

struct ParsedRequest {
  std::string model, version, id;
  std::vector<InputView> inputs;
  std::vector<std::string> outputs;
  std::vector<std::pair<size_t, size_t>> raw;  // offset, length in the request bytes
};

bool ParseShape(int type, uint64_t value, const uint8_t* data, size_t len,
                std::vector<int64_t>* shape) {
  if (type == 0) {
    if (shape->size() >= kMaxDims) return false;
    shape->push_back(static_cast<int64_t>(value));
    return true;
  }
  if (type != 2) return false;
  WireReader packed(data, len);
  while (!packed.done()) {
    uint64_t v;
    if (shape->size() >= kMaxDims || !packed.Varint(&v)) return false;
    shape->push_back(static_cast<int64_t>(v));
  }
  return true;
}

bool ParseInput(const uint8_t* base, const uint8_t* data, size_t len, InputView* in) {
  WireReader r(data, len);
  while (!r.done()) {
    WireReader::Field f;
    if (!r.Next(&f)) return false;
    if (f.number == 1 && f.type == 2) {
      in->name.assign(reinterpret_cast<const char*>(f.data), f.len);
    } else if (f.number == 2 && f.type == 2) {
      in->datatype.assign(reinterpret_cast<const char*>(f.data), f.len);
    } else if (f.number == 3) {
      if (!ParseShape(f.type, f.value, f.data, f.len, &in->shape)) return false;
    } else if (f.number == 5 && f.type == 2 && !in->has_contents) {
      in->has_contents = true;
      in->contents_offset = static_cast<size_t>(f.data - base);
      in->contents_len = f.len;
    } else {
      return false;  // parameters, anything else: Python's path
    }
  }
  return true;
}

bool ParseOutput(const uint8_t* data, size_t len, std::string* name) {
  WireReader r(data, len);
  while (!r.done()) {
    WireReader::Field f;
    if (!r.Next(&f)) return false;
    if (f.number == 1 && f.type == 2) {
      name->assign(reinterpret_cast<const char*>(f.data), f.len);
    } else {
      return false;  // parameters (classification, shared memory): Python's path
    }
  }
  return true;
}

// NOTE: protobuf refuses string fields that are no UTF-8 (INVALID_ARGUMENT on the Python
// path); the lane takes ASCII only and leaves the rest to Python to judge
bool Ascii(const uint8_t* data, size_t len) {
  for (size_t i = 0; i < len; i++) {
    if (data[i] & 0x80) return false;
  }
  return true;
}

// An InferParameter, read as upb would accept it: bool (1), int64 (2), string (3), double
// (4), uint64 (5); anything else (or a string that is not ASCII): Python's path.
bool ParameterValueValid(const uint8_t* data, size_t len) {
  WireReader r(data, len);
  while (!r.done()) {
    WireReader::Field f;
    if (!r.Next(&f)) return false;
    bool ok = ((f.number == 1 || f.number == 2 || f.number == 5) && f.type == 0) ||
              (f.number == 3 && f.type == 2 && Ascii(f.data, f.len)) ||
              (f.number == 4 && f.type == 1);
    if (!ok) return false;
  }
  return true;
}

// A request parameter (a map entry: 1 key, 2 value). The Python path reads only `timeout`
// (and refuses one that is no integer); it ignores the rest, as perf_analyzer's
// triton_enable_empty_final_response, and so does a lane.
bool ParameterIgnored(const uint8_t* data, size_t len) {
  WireReader r(data, len);
  while (!r.done()) {
    WireReader::Field f;
    if (!r.Next(&f) || f.type != 2) return false;
    if (f.number == 1) {
      if (!Ascii(f.data, f.len) ||
          std::string(reinterpret_cast<const char*>(f.data), f.len) == "timeout") {
        return false;
      }
    } else if (f.number != 2 || !ParameterValueValid(f.data, f.len)) {
      return false;
    }
  }
  return true;
}

bool ParseRequest(const std::string& body, ParsedRequest* out) {
  const uint8_t* base = reinterpret_cast<const uint8_t*>(body.data());
  WireReader r(base, body.size());
  while (!r.done()) {
    WireReader::Field f;
    if (!r.Next(&f) || f.type != 2) return false;
    const uint8_t* d = f.data;
    size_t n = f.len;
    const char* text = reinterpret_cast<const char*>(d);
    switch (f.number) {
      case 1:
        out->model.assign(text, n);
        break;
      case 2:
        out->version.assign(text, n);
        break;
      case 3:
        if (!Ascii(d, n)) return false;
        out->id.assign(text, n);
        break;
      case 4:
        if (!ParameterIgnored(d, n)) return false;
        break;
      case 5:
        if (out->inputs.size() >= kMaxTensors) return false;
        out->inputs.emplace_back();
        if (!ParseInput(base, d, n, &out->inputs.back())) return false;
        break;
      case 6:
        if (out->outputs.size() >= kMaxTensors) return false;
        out->outputs.emplace_back();
        if (!ParseOutput(d, n, &out->outputs.back())) return false;
        break;
      case 7:
        if (out->raw.size() >= kMaxTensors) return false;
        out->raw.emplace_back(static_cast<size_t>(d - base), n);
        break;
      default:
        return false;  // a field this reader does not know: Python's path
    }
  }
  return true;
}

void PutVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

size_t VarintSize(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    n++;
  }
  return n;
}

void PutBytes(std::string* out, uint32_t field, const char* data, size_t len) {
  PutVarint(out, (static_cast<uint64_t>(field) << 3) | 2);
  PutVarint(out, len);
  out->append(data, len);
}

void PutString(std::string* out, uint32_t field, const std::string& s) {
  PutBytes(out, field, s.data(), s.size());
}

// Typed contents (InferTensorContents) of the datatypes the lane decodes, as little-endian
// bytes: FP32 (fp32_contents, 6), FP64 (fp64_contents, 7), INT64 (int64_contents, 3), INT32
// (int_contents, 2); packed or not. Any other field, or another datatype, or more than
// `limit` bytes (stopped as soon as it is passed: 1-byte varints grow 8-fold): Python's path.
bool DecodeTyped(const uint8_t* data, size_t len, const std::string& datatype, size_t limit,
                 std::string* out) {
  uint32_t want;
  int width;  // bytes per element; 0 = a varint
  if (datatype == "FP32") {
    want = 6, width = 4;
  } else if (datatype == "FP64") {
    want = 7, width = 8;
  } else if (datatype == "INT64") {
    want = 3, width = 0;
  } else if (datatype == "INT32") {
    want = 2, width = 0;
  } else {
    return false;
  }
  auto put_varint = [&](uint64_t v) {
    if (datatype == "INT64") {
      out->append(reinterpret_cast<const char*>(&v), 8);
    } else {
      int32_t i = static_cast<int32_t>(v);
      out->append(reinterpret_cast<const char*>(&i), 4);
    }
  };
  WireReader r(data, len);
  while (!r.done()) {
    WireReader::Field f;
    if (!r.Next(&f) || f.number != want) return false;
    if (f.type == 2 && width > 0) {  // packed fixed-width
      if (f.len % width || f.len > limit - out->size()) return false;
      out->append(reinterpret_cast<const char*>(f.data), f.len);
    } else if (f.type == 2) {  // packed varints
      WireReader packed(f.data, f.len);
      while (!packed.done()) {
        uint64_t v;
        if (!packed.Varint(&v)) return false;
        put_varint(v);
        if (out->size() > limit) return false;
      }
    } else if ((f.type == 5 && width == 4) || (f.type == 1 && width == 8)) {
      out->append(reinterpret_cast<const char*>(f.data), f.len);
    } else if (f.type == 0 && width == 0) {
      put_varint(f.value);
    } else {
      return false;
    }
    if (out->size() > limit) return false;
  }
  return true;
}

struct LaneInput {
  std::string name, datatype, dtype;  // dtype: numpy's, e.g. "<f4"
  size_t itemsize;
  std::vector<int64_t> dims;  // without the batch dim; -1 = any
};

// Where a lane's answer to an HTTP infer request goes: the connection's thread waits here
// (http_front.h) and writes it. Error bodies are Triton's {"error": "..."}.
struct HttpReply {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  int status = 0;
  std::string body;
  size_t header_length = 0;  // of the JSON before the binary outputs; 0: all JSON (an error)

  void Deliver(int code, std::string data, size_t json_length) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (done) return;
      status = code, body = std::move(data), header_length = json_length, done = true;
    }
    cv.notify_all();
  }
};

// The HTTP status Triton's HTTP frontend answers for a gRPC status code (HttpCodeFromError).
int HttpStatusOf(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::NOT_FOUND: return 404;
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return 503;
    case grpc::StatusCode::UNIMPLEMENTED: return 501;
    case grpc::StatusCode::INTERNAL: return 500;
    default: return 400;
  }
}

// {"error": "..."}, as the Python frontend's json_response writes it.
std::string HttpErrorBody(const std::string& message) {
  std::string out = "{\"error\": ";
  if (!json_lite::Quote(message, &out)) {
    out.resize(10);
    json_lite::Quote("internal error; see server log", &out);
  }
  out += "}";
  return out;
}

// One request the lane holds: its bytes (the raw inputs stay in them), where they are, and
// what it asked for. It came as a gRPC call (`call`) or over HTTP (`http`).
struct Pending {
  Call* call = nullptr;
  std::shared_ptr<HttpReply> http;
  std::string body;
  ParsedRequest req;
  std::vector<size_t> raw_of_input;  // lane input index -> index into req.inputs (and req.raw)
  std::vector<std::string> typed;    // lane input index -> its typed contents, decoded
  int64_t rows = 0;
  std::string signature;  // non-batch dims of every input: only equal ones share a batch
  int64_t arrival_ns = 0;
  std::string response;
  grpc::Status status;
  int outcome = -1;  // see Batch::Outcomes
  bool stream = false;  // a ModelStreamInfer message: answered in-band, in its slot
  uint64_t slot = 0;
  size_t http_header_length = 0;  // HTTP: the answer's JSON header, before binary outputs

  // NOTE: a safety net: an HTTP request dropped unanswered must not hold its thread forever
  // (Deliver ignores this once answered)
  ~Pending() {
    if (http) http->Deliver(500, HttpErrorBody("internal error; see server log"), 0);
  }
};

// ModelInferResponse.parameters {"triton_final_response": bool_param true}, serialized:
// Python's stream answers end with it (codec.FINAL_RESPONSE_FLAG; protobuf merges it in).
const std::string kFinalFlag =
    std::string("\x22\x1b\x0a\x15triton_final_response\x12\x02\x08\x01", 29);

// ModelStreamInferResponse{infer_response}, as codec.stream_response builds it.
std::string StreamWrap(const std::string& response) {
  std::string out;
  out.reserve(response.size() + kFinalFlag.size() + 12);
  PutVarint(&out, (2u << 3) | 2);
  PutVarint(&out, response.size() + kFinalFlag.size());
  out += response;
  out += kFinalFlag;
  return out;
}

// An in-band error, as the servicer's _stream_error words it.
std::string StreamError(const ParsedRequest& req, const std::string& message) {
  std::string inner;
  if (!req.model.empty()) PutString(&inner, 1, req.model);
  if (!req.version.empty()) PutString(&inner, 2, req.version);
  if (!req.id.empty()) PutString(&inner, 3, req.id);
  inner += kFinalFlag;
  std::string out;
  if (!message.empty()) PutString(&out, 1, message);
  PutString(&out, 2, inner);
  return out;
}

struct OutView {
  std::string name, datatype;
  std::vector<int64_t> shape;  // of the whole array
  const char* data;
  size_t nbytes;
};

enum Outcome { kOk = 0, kFailedByPython = 1, kGoneOutcome = 2, kTooLarge = 3 };

class Batch;

class Lane : public std::enable_shared_from_this<Lane> {
 public:
  Lane(Bridge* bridge, uint64_t id, std::string name, std::string version,
       std::vector<LaneInput> inputs, std::vector<std::string> outputs, int max_rows,
       int64_t delay_ns, int target_rows, int64_t max_queue)
      : bridge_(bridge), id_(id), name_(std::move(name)), version_(std::move(version)),
        inputs_(std::move(inputs)), outputs_(std::move(outputs)),
        max_rows_(std::max(max_rows, 1)), delay_ns_(delay_ns),
        target_rows_(std::max(1, std::min(target_rows, max_rows_))),
        max_queue_(max_queue > 0 ? max_queue : (int64_t(1) << 62)) {}

  uint64_t id() const { return id_; }
  const std::string& name() const { return name_; }

  // Completion-queue thread: does this request fit the model exactly as the Python path
  // would accept it? Fills rows, signature and where each input's bytes are.
  bool Accepts(Pending* p) const {
    const ParsedRequest& r = p->req;
    if (!r.version.empty() && r.version != version_) return false;
    if (r.inputs.size() != inputs_.size()) return false;
    // NOTE: raw contents for every input, or typed contents for every input, as the Python
    // path accepts them; a mix is an error it words
    bool typed = r.raw.empty();
    if (!typed && r.raw.size() != r.inputs.size()) return false;
    for (const InputView& in : r.inputs) {
      if (in.has_contents != typed) return false;
    }
    p->raw_of_input.assign(inputs_.size(), SIZE_MAX);
    if (typed) p->typed.assign(inputs_.size(), std::string());
    int64_t rows = -1;
    std::string signature;
    for (size_t k = 0; k < r.inputs.size(); k++) {
      const InputView& in = r.inputs[k];
      size_t i = 0;
      while (i < inputs_.size() && inputs_[i].name != in.name) i++;
      if (i == inputs_.size() || p->raw_of_input[i] != SIZE_MAX) return false;
      const LaneInput& spec = inputs_[i];
      if (in.datatype != spec.datatype || in.shape.size() != spec.dims.size() + 1) return false;
      if (in.shape[0] < 1 || in.shape[0] > max_rows_) return false;
      if (rows != -1 && in.shape[0] != rows) return false;
      rows = in.shape[0];
      uint64_t count = static_cast<uint64_t>(rows);
      for (size_t d = 0; d < spec.dims.size(); d++) {
        int64_t got = in.shape[d + 1];
        if (got < 0 || (spec.dims[d] != -1 && spec.dims[d] != got)) return false;
        if (got != 0 && count > (uint64_t(1) << 40) / static_cast<uint64_t>(got)) return false;
        count *= static_cast<uint64_t>(got);
      }
      if (typed) {
        // NOTE: every element takes at least one byte of contents: more claimed is an error
        // for the Python path to word, and no decoded size may pass the shape's
        if (count > in.contents_len) return false;
        const uint8_t* base = reinterpret_cast<const uint8_t*>(p->body.data());
        if (!DecodeTyped(base + in.contents_offset, in.contents_len, spec.datatype,
                         count * spec.itemsize, &p->typed[i]) ||
            p->typed[i].size() != count * spec.itemsize) {
          return false;
        }
      } else if (r.raw[k].second != count * spec.itemsize) {
        return false;
      }
      p->raw_of_input[i] = k;
    }
    for (size_t i = 0; i < inputs_.size(); i++) {
      const auto& shape = r.inputs[p->raw_of_input[i]].shape;
      signature.append(reinterpret_cast<const char*>(shape.data() + 1),
                       (shape.size() - 1) * sizeof(int64_t));
    }
    std::set<std::string> seen;
    for (const std::string& out : r.outputs) {
      if (std::find(outputs_.begin(), outputs_.end(), out) == outputs_.end()) return false;
      if (!seen.insert(out).second) return false;
    }
    p->rows = rows;
    p->signature = std::move(signature);
    return true;
  }

  // Completion-queue thread: queue it (false: closed or full; the Python path answers it,
  // counting this queue in the model's limit).
  bool Admit(std::unique_ptr<Pending>& p);
  // Completion-queue thread: the caller left; a request still queued leaves the queue.
  void Cancel(Call* call);
  // Completion-queue thread: a stream's client left; its queued messages leave the queue.
  void CancelStream(Call* call);

  // Python engine thread: the next batch (None once stopped and empty); GIL released while
  // it waits.
  py::object NextBatch();

  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = false;
  }
  bool open() {
    std::lock_guard<std::mutex> lock(mu_);
    return open_;
  }
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      open_ = false;
      stopping_ = true;
    }
    cv_.notify_all();
  }
  int64_t Outstanding() {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int64_t>(queue_.size()) + in_batches_;
  }
  int64_t Queued() {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int64_t>(queue_.size());
  }
  // Python: answer every queued request with this status (unload past its grace period);
  // returns their arrival times, for the failure statistics.
  std::vector<int64_t> AbortQueued(int code, const std::string& message);

  // Batch: its requests are answered (sent); `size` requests, the last call ran `size` ones.
  void Done(size_t size);

  const std::vector<LaneInput>& inputs() const { return inputs_; }
  const std::string& version() const { return version_; }
  Bridge* bridge() const { return bridge_; }
  void ReportFailure(const char* reason, int64_t ns);

 private:
  Bridge* bridge_;
  uint64_t id_;
  std::string name_, version_;
  std::vector<LaneInput> inputs_;
  std::vector<std::string> outputs_;
  int max_rows_;
  int64_t delay_ns_;
  int target_rows_;
  int64_t max_queue_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Pending>> queue_;
  int64_t queued_rows_ = 0;
  int64_t in_batches_ = 0;  // requests taken by a batch and not yet answered
  int64_t returning_ = 0;   // requests just answered whose clients may come right back
  bool open_ = true;
  bool stopping_ = false;
};

// What a Python engine thread holds: the batch's inputs as numpy arrays over buffers owned
// here, and the requests to answer. Answered exactly once: send(), or on deletion INTERNAL.
class Batch {
 public:
  Batch(std::shared_ptr<Lane> lane, std::vector<std::unique_ptr<Pending>> requests,
        int64_t dispatch_ns)
      : lane_(std::move(lane)), requests_(std::move(requests)), dispatch_ns_(dispatch_ns) {}
  ~Batch() {
    if (!sent_) {
      for (auto& p : requests_) {
        if (p->outcome == -1) {
          p->status = grpc::Status(grpc::StatusCode::INTERNAL, "internal error; see server log");
          p->outcome = kFailedByPython;
        }
      }
      Post();
    }
  }

  void Merge() {  // GIL held: arrays for Python, one contiguous buffer per input
    int64_t t0 = NowNs();
    rows_ = 0;
    for (auto& p : requests_) rows_ += p->rows;
    py::dict inputs;
    const auto& specs = lane_->inputs();
    // NOTE: a batch of one request needs no merging: its arrays are views of its own bytes
    // (the body is no longer needed here once parsed), which the arrays then keep alive
    std::shared_ptr<std::string> own;
    if (requests_.size() == 1 && requests_.front()->typed.empty()) {
      own = std::make_shared<std::string>(std::move(requests_.front()->body));
    }
    for (size_t i = 0; i < specs.size(); i++) {
      const Pending& first = *requests_.front();
      std::vector<int64_t> shape = first.req.inputs[first.raw_of_input[i]].shape;
      shape[0] = rows_;
      if (own) {
        const char* data = own->data() + first.req.raw[first.raw_of_input[i]].first;
        auto* keep = new std::shared_ptr<std::string>(own);
        py::capsule owner(keep, [](void* k) {
          delete static_cast<std::shared_ptr<std::string>*>(k);
        });
        py::array view(py::dtype(specs[i].dtype), shape, data, owner);
        view.attr("setflags")(py::arg("write") = false);  // NOTE: as the Python path's arrays
        inputs[py::str(specs[i].name)] = view;
        continue;
      }
      auto bytes_of = [i](const Pending& p) -> std::pair<const char*, size_t> {
        if (!p.typed.empty()) return {p.typed[i].data(), p.typed[i].size()};
        auto [offset, len] = p.req.raw[p.raw_of_input[i]];
        return {p.body.data() + offset, len};
      };
      size_t total = 0;
      for (auto& p : requests_) total += bytes_of(*p).second;
      auto* buffer = new std::vector<char>(total);
      size_t at = 0;
      for (auto& p : requests_) {
        auto [data, len] = bytes_of(*p);
        if (len) std::memcpy(buffer->data() + at, data, len);
        at += len;
      }
      py::capsule owner(buffer, [](void* b) { delete static_cast<std::vector<char>*>(b); });
      inputs[py::str(specs[i].name)] =
          py::array(py::dtype(specs[i].dtype), shape, buffer->data(), owner);
    }
    inputs_ = inputs;
    // wanted outputs: the requests' common list, else all (None)
    const auto& want = requests_.front()->req.outputs;
    bool same = true;
    for (auto& p : requests_) same = same && p->req.outputs == want;
    wanted_ = (same && !want.empty()) ? py::object(py::tuple(py::cast(want))) : py::object(py::none());
    merge_ns_ = NowNs() - t0;
  }

  // Encode answers from outputs [(name, datatype, array)]: index -1 = the whole batch's
  // outputs (batch dim = total rows), else request `index` alone (its own engine call).
  void Answer(py::list outputs, int index) {
    std::vector<OutView> views;
    std::vector<py::array> keep;
    for (auto item : outputs) {
      auto t = item.cast<py::tuple>();
      py::array a = py::array::ensure(t[2], py::array::c_style);
      if (!a) throw std::invalid_argument("output is not an array");
      OutView v{t[0].cast<std::string>(), t[1].cast<std::string>(), {},
                static_cast<const char*>(a.data()), static_cast<size_t>(a.nbytes())};
      for (py::ssize_t d = 0; d < a.ndim(); d++) v.shape.push_back(a.shape(d));
      keep.push_back(a);
      views.push_back(std::move(v));
    }
    size_t first = index < 0 ? 0 : static_cast<size_t>(index);
    size_t last = index < 0 ? requests_.size() : first + 1;
    int64_t total = 0;
    for (size_t i = first; i < last; i++) total += requests_[i]->rows;
    for (const OutView& v : views) {
      if (v.shape.empty() || v.shape[0] != total) {
        throw std::invalid_argument("output '" + v.name + "' has batch dim " +
                                    (v.shape.empty() ? std::string("()")
                                                     : "(" + std::to_string(v.shape[0]) + ",)") +
                                    ", expected " + std::to_string(total) + " rows");
      }
    }
    int64_t limit = lane_->bridge()->max_message_bytes();
    py::gil_scoped_release release;
    int64_t row = 0;
    for (size_t i = first; i < last; i++) {
      Pending& p = *requests_[i];
      Encode(p, views, row, total);
      row += p.rows;
      size_t size = p.response.size();
      if (p.http) {  // NOTE: HTTP has no message limit (the Python frontend checks none)
        p.outcome = kOk;
        continue;
      }
      // NOTE: a stream's answer must fit with its wrapper, as the servicer checks it
      size_t sent = p.stream ? size + kFinalFlag.size() + 1 +
                                   VarintSize(size + kFinalFlag.size())
                             : size;
      if (static_cast<int64_t>(sent) > limit) {
        p.status = grpc::Status(
            grpc::StatusCode::RESOURCE_EXHAUSTED,
            "response of " + std::to_string(size) + " bytes" +
                (p.stream ? " (" + std::to_string(sent) + " with the stream's wrapper)"
                          : std::string()) +
                " exceeds the " + std::to_string(limit) +
                "-byte limit (--grpc-max-message-bytes)");
        p.response.clear();
        p.outcome = kTooLarge;
      } else {
        if (p.stream) p.response = StreamWrap(p.response);
        p.outcome = kOk;
      }
    }
  }

  void Fail(int index, int code, const std::string& message) {
    size_t first = index < 0 ? 0 : static_cast<size_t>(index);
    size_t last = index < 0 ? requests_.size() : first + 1;
    for (size_t i = first; i < last; i++) {
      requests_[i]->status = grpc::Status(static_cast<grpc::StatusCode>(code), message);
      requests_[i]->response.clear();
      requests_[i]->outcome = kFailedByPython;
    }
  }

  // Fail the requests with no outcome yet (answers already encoded stay as they are).
  void FailUnanswered(int code, const std::string& message) {
    for (auto& p : requests_) {
      if (p->outcome != -1) continue;
      p->status = grpc::Status(static_cast<grpc::StatusCode>(code), message);
      p->response.clear();
      p->outcome = kFailedByPython;
    }
  }

  // Per request: 0 answered, 1 failed (by Python), 2 its caller is gone, 3 too large.
  std::vector<int> Outcomes() {
    std::vector<int> out;
    for (auto& p : requests_) {
      int o = p->outcome < 0 ? kFailedByPython : p->outcome;
      if (p->call != nullptr && p->call->Gone()) o = kGoneOutcome;
      out.push_back(o);
    }
    return out;
  }

  void Send() {
    if (sent_) return;
    Post();
  }

  py::object inputs() const { return inputs_; }
  py::object wanted() const { return wanted_; }
  int64_t rows() const { return rows_; }
  size_t size() const { return requests_.size(); }
  int64_t dispatch_ns() const { return dispatch_ns_; }
  int64_t merge_ns() const { return merge_ns_; }
  std::vector<int64_t> arrivals() const {
    std::vector<int64_t> out;
    for (auto& p : requests_) out.push_back(p->arrival_ns);
    return out;
  }
  std::vector<int64_t> row_counts() const {
    std::vector<int64_t> out;
    for (auto& p : requests_) out.push_back(p->rows);
    return out;
  }

 private:
  void Encode(Pending& p, const std::vector<OutView>& views, int64_t row, int64_t total);
  void EncodeHttp(Pending& p, const std::vector<const OutView*>& chosen, int64_t row,
                  int64_t total);
  void Post();

  std::shared_ptr<Lane> lane_;
  std::vector<std::unique_ptr<Pending>> requests_;
  int64_t dispatch_ns_;
  int64_t merge_ns_ = 0;
  int64_t rows_ = 0;
  py::object inputs_ = py::none();
  py::object wanted_ = py::none();
  bool sent_ = false;
};

void Batch::Encode(Pending& p, const std::vector<OutView>& views, int64_t row, int64_t total) {
  std::string& out = p.response;
  out.clear();
  std::vector<const OutView*> chosen;
  if (p.req.outputs.empty()) {
    for (const OutView& v : views) chosen.push_back(&v);
  } else {
    for (const std::string& name : p.req.outputs) {
      for (const OutView& v : views) {
        if (v.name == name) chosen.push_back(&v);
      }
    }
  }
  if (p.http) {
    EncodeHttp(p, chosen, row, total);
    return;
  }
  size_t size = 64 + p.req.id.size();
  for (const OutView* v : chosen) size += 64 + v->nbytes / std::max<int64_t>(total, 1);
  out.reserve(size);
  PutString(&out, 1, lane_->name());
  PutString(&out, 2, lane_->version());
  if (!p.req.id.empty()) PutString(&out, 3, p.req.id);
  for (const OutView* v : chosen) {
    std::string packed;
    PutVarint(&packed, static_cast<uint64_t>(p.rows));
    for (size_t d = 1; d < v->shape.size(); d++) PutVarint(&packed, v->shape[d]);
    size_t len = 1 + VarintSize(v->name.size()) + v->name.size() + 1 +
                 VarintSize(v->datatype.size()) + v->datatype.size() + 1 +
                 VarintSize(packed.size()) + packed.size();
    PutVarint(&out, (5u << 3) | 2);
    PutVarint(&out, len);
    PutString(&out, 1, v->name);
    PutString(&out, 2, v->datatype);
    PutString(&out, 3, packed);
  }
  for (const OutView* v : chosen) {
    size_t row_bytes = v->nbytes / static_cast<size_t>(std::max<int64_t>(total, 1));
    PutBytes(&out, 6, v->data + row_bytes * row, row_bytes * p.rows);
  }
}

// The Python frontend's answer to a binary infer request (http_codec.encode_response): JSON
// header, then each output's rows; the lane takes only requests that want every output binary.
void Batch::EncodeHttp(Pending& p, const std::vector<const OutView*>& chosen, int64_t row,
                       int64_t total) {
  std::string& out = p.response;
  out = "{\"model_name\":";
  json_lite::Quote(lane_->name(), &out);
  out += ",\"model_version\":";
  json_lite::Quote(lane_->version(), &out);
  if (!p.req.id.empty()) {
    out += ",\"id\":";
    json_lite::Quote(p.req.id, &out);
  }
  out += ",\"outputs\":[";
  size_t binary = 0;
  for (const OutView* v : chosen) {
    size_t row_bytes = v->nbytes / static_cast<size_t>(std::max<int64_t>(total, 1));
    if (v != chosen.front()) out += ",";
    out += "{\"name\":";
    json_lite::Quote(v->name, &out);
    out += ",\"datatype\":";
    json_lite::Quote(v->datatype, &out);
    out += ",\"shape\":[" + std::to_string(p.rows);
    for (size_t d = 1; d < v->shape.size(); d++) out += "," + std::to_string(v->shape[d]);
    out += "],\"parameters\":{\"binary_data_size\":" + std::to_string(row_bytes * p.rows) + "}}";
    binary += row_bytes * p.rows;
  }
  out += "]}";
  p.http_header_length = out.size();
  out.reserve(out.size() + binary);
  for (const OutView* v : chosen) {
    size_t row_bytes = v->nbytes / static_cast<size_t>(std::max<int64_t>(total, 1));
    out.append(v->data + row_bytes * row, row_bytes * p.rows);
  }
}

// A request's answer (its response when its outcome is kOk, else its status) on its way:
// to its HTTP connection's thread, or to the outbox for its gRPC call or stream slot. The
// caller flushes the outbox.
void PostAnswer(Bridge* bridge, Pending& p) {
  Call* call = p.call;
  bool ok = p.outcome == kOk;
  if (p.http) {  // NOTE: its connection's thread writes it; nothing for the outbox
    if (ok) {
      p.http->Deliver(200, std::move(p.response), p.http_header_length);
    } else {
      p.http->Deliver(HttpStatusOf(p.status.error_code()),
                      HttpErrorBody(p.status.error_message()), 0);
    }
  } else if (p.stream) {
    std::string body = ok ? std::move(p.response) : StreamError(p.req, p.status.error_message());
    uint64_t slot = p.slot;
    bridge->Post([call, slot, body = std::move(body)]() mutable {
      call->FillLane(slot, std::move(body), false);
    });
  } else if (ok) {
    bridge->Post([call, body = std::move(p.response)]() mutable { call->Write(std::move(body)); });
  } else {
    grpc::Status status = p.status;
    bridge->Post([call, status] { call->Finish(status); });
  }
}

void Batch::Post() {
  sent_ = true;
  Bridge* bridge = lane_->bridge();
  for (auto& p : requests_) PostAnswer(bridge, *p);
  bridge->Flush();
  lane_->Done(requests_.size());
}

void Lane::ReportFailure(const char* reason, int64_t ns) {
  bridge_->Push({nullptr, id_, kFailed, reason, std::to_string(ns)});
}

bool Lane::Admit(std::unique_ptr<Pending>& p) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!open_ || static_cast<int64_t>(queue_.size()) >= max_queue_) return false;
  if (p->call != nullptr && !p->stream) p->call->SetLane(shared_from_this());
  bool was_empty = queue_.empty();
  queued_rows_ += p->rows;
  queue_.push_back(std::move(p));
  if (returning_ > 0) returning_--;
  // NOTE: wake the engine thread only when its decision can change
  bool wake = was_empty || queued_rows_ >= target_rows_ || returning_ == 0;
  if (wake) cv_.notify_one();
  return true;
}

void Lane::CancelStream(Call* call) {
  std::vector<std::unique_ptr<Pending>> gone;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = queue_.begin(); it != queue_.end();) {
      if ((*it)->call == call) {
        queued_rows_ -= (*it)->rows;
        gone.push_back(std::move(*it));
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& p : gone) {
    ReportFailure("CANCELED", NowNs() - p->arrival_ns);
    call->FillLane(p->slot, std::string(), true);
  }
}

void Lane::Cancel(Call* call) {
  std::unique_ptr<Pending> gone;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
      if ((*it)->call == call) {
        gone = std::move(*it);
        queue_.erase(it);
        queued_rows_ -= gone->rows;
        break;
      }
    }
  }
  if (!gone) return;  // in a batch: answered (and counted CANCELED) when the batch is done
  call->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
  ReportFailure("CANCELED", NowNs() - gone->arrival_ns);
}

py::object Lane::NextBatch() {
  std::vector<std::unique_ptr<Pending>> batch;
  int64_t now = 0;
  bool stopped = false;
  {
    py::gil_scoped_release release;  // NOTE: no Python object may be touched in here
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      if (queue_.empty()) {
        if (stopping_) {
          stopped = true;
          break;
        }
        cv_.wait(lock);
        continue;
      }
      if (stopping_ || delay_ns_ <= 0 || queued_rows_ >= target_rows_) break;
      now = NowNs();
      int64_t deadline = queue_.front()->arrival_ns + delay_ns_;
      // NOTE: wait only for clients just answered (see README, Dynamic batching); Triton's
      // scheduler waits for every batch, which at concurrency 1 costs the whole delay
      if (returning_ == 0 || now >= deadline) break;
      cv_.wait_until(lock, std::chrono::steady_clock::time_point(std::chrono::nanoseconds(deadline)));
    }
    if (!stopped) {
      returning_ = 0;
      // the oldest request and every later one of the same shapes, up to max_batch_size rows
      const std::string signature = queue_.front()->signature;
      int64_t rows = 0;
      for (auto it = queue_.begin(); it != queue_.end() && rows < max_rows_;) {
        if ((*it)->signature == signature && rows + (*it)->rows <= max_rows_) {
          rows += (*it)->rows;
          batch.push_back(std::move(*it));
          it = queue_.erase(it);
        } else {
          ++it;
        }
      }
      queued_rows_ -= rows;
      in_batches_ += static_cast<int64_t>(batch.size());
      now = NowNs();
      // NOTE: requests of other shapes (or past max_batch_size) left queued: another
      // waiting engine thread may take them now
      if (!queue_.empty()) cv_.notify_one();
    }
  }
  if (stopped) return py::none();
  auto out = std::make_unique<Batch>(shared_from_this(), std::move(batch), now);
  out->Merge();
  return py::cast(std::move(out));
}

void Lane::Done(size_t size) {
  std::lock_guard<std::mutex> lock(mu_);
  in_batches_ -= static_cast<int64_t>(size);
  // clients just answered tend to send again at once (closed-loop load)
  returning_ = size > 1 ? static_cast<int64_t>(size) : 0;
  // NOTE: a thread waiting for returning clients of an earlier batch must re-decide
  cv_.notify_one();
}

std::vector<int64_t> Lane::AbortQueued(int code, const std::string& message) {
  std::deque<std::unique_ptr<Pending>> queued;
  {
    std::lock_guard<std::mutex> lock(mu_);
    queued.swap(queue_);
    queued_rows_ = 0;
  }
  std::vector<int64_t> arrivals;
  grpc::Status status(static_cast<grpc::StatusCode>(code), message);
  for (auto& p : queued) {
    p->status = status;
    p->outcome = kFailedByPython;  // NOTE: not kOk: PostAnswer sends the status
    PostAnswer(bridge_, *p);
    arrivals.push_back(p->arrival_ns);
  }
  bridge_->Flush();
  return arrivals;
}

std::shared_ptr<Lane> Bridge::AddLane(py::str name, py::str version, py::list inputs,
                                      std::vector<std::string> outputs, int max_rows,
                                      int64_t delay_us, int target_rows, int64_t max_queue) {
  std::vector<LaneInput> specs;
  for (auto item : inputs) {
    auto t = item.cast<py::tuple>();
    specs.push_back({t[0].cast<std::string>(), t[1].cast<std::string>(),
                     t[2].cast<std::string>(), t[3].cast<size_t>(),
                     t[4].cast<std::vector<int64_t>>()});
  }
  std::lock_guard<std::mutex> lock(lanes_mu_);
  auto lane = std::make_shared<Lane>(this, ++last_lane_id_, name.cast<std::string>(),
                                     version.cast<std::string>(), std::move(specs),
                                     std::move(outputs), max_rows, delay_us * 1000, target_rows,
                                     max_queue);
  auto& slot = lanes_[lane->name()];
  if (slot) slot->Close();
  slot = lane;
  return lane;
}

void Bridge::RemoveLane(Lane* lane) {
  lane->Close();
  std::lock_guard<std::mutex> lock(lanes_mu_);
  auto it = lanes_.find(lane->name());
  if (it != lanes_.end() && it->second.get() == lane) lanes_.erase(it);
}

bool Bridge::TryFast(Call* call, std::string& body) {
  static const std::string kModelInfer = "/inference.GRPCInferenceService/ModelInfer";
  static const std::string kStreamInfer = "/inference.GRPCInferenceService/ModelStreamInfer";
  if (call->method() != kModelInfer && call->method() != kStreamInfer) return false;
  bool taken = false;
  try {
    taken = TakeFast(call, body);
  } catch (...) {  // NOTE: e.g. bad_alloc: the completion-queue thread must not terminate
    taken = false;
  }
  if (!taken) {
    python_infers_++;
    return false;
  }
  native_infers_++;
  return true;
}

std::shared_ptr<Lane> Bridge::LaneFor(const std::string& model) {
  std::lock_guard<std::mutex> lock(lanes_mu_);
  if (!fast_) return nullptr;
  auto it = lanes_.find(model);
  return it == lanes_.end() ? nullptr : it->second;
}

bool Bridge::TakeFast(Call* call, std::string& body) {
  auto p = std::make_unique<Pending>();
  p->arrival_ns = NowNs();
  if (!ParseRequest(body, &p->req)) return false;
  std::shared_ptr<Lane> lane = LaneFor(p->req.model);
  if (!lane) return false;
  p->call = call;
  p->body = std::move(body);  // NOTE: parsed positions are offsets: they survive the move
  bool taken = false;
  bool slotted = false;  // a stream's message: its answer slot, given back unless taken
  uint64_t slot = 0;
  try {
    if (lane->Accepts(p.get())) {
      if (call->streaming()) {
        p->stream = true;
        slotted = call->AddLaneSlot(lane, &slot);
        p->slot = slot;
        taken = slotted && lane->Admit(p);
      } else {
        taken = lane->Admit(p);
      }
    }
  } catch (...) {  // the body goes back for the Python path (TryFast)
    taken = false;
  }
  if (taken) return true;
  if (slotted) call->DropLaneSlot(slot);
  if (p) body = std::move(p->body);
  return false;
}

#include "http_front.h"

bool Bridge::TakeHttp(std::unique_ptr<Pending>& p) {
  std::shared_ptr<Lane> lane = LaneFor(p->req.model);
  return lane && lane->Accepts(p.get()) && lane->Admit(p);
}

int Bridge::ServeHttp(const std::string& host, int port, const std::string& upstream,
                      uint64_t max_body, const std::string& restrict_header,
                      const std::string& restrict_value) {
  if (http_) throw std::runtime_error("HTTP is already served");
  auto front = std::make_shared<HttpFront>(this, upstream, max_body, restrict_header,
                                           restrict_value);
  int bound = front->Listen(host, port);
  front->Start();
  http_ = front;
  return bound;
}

std::pair<uint64_t, uint64_t> Bridge::HttpCounts() const {
  return http_ ? http_->Counts() : std::pair<uint64_t, uint64_t>{0, 0};
}

void Bridge::StopHttp() {
  if (!http_) return;
  py::gil_scoped_release release;
  http_->Shutdown();
}

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
    if (e.kind != kEnd && e.kind != kGone) payload = py::bytes(e.payload);
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
  ordered_ = streaming && ctx_.method() == "/inference.GRPCInferenceService/ModelStreamInfer";
  id_ = id;
  pending_++;
  stream_.Read(&request_, &read_tag_);
}

void Call::OnOp(Op op, bool ok) {
  bool remove = false;
  bool hand_over = false;  // a unary request was read: a native lane or Python answers it
  bool stream_message = false;  // a stream's message was read: the same, then read on
  std::string body;
  std::shared_ptr<Lane> cancel;  // a native lane's call whose caller left unanswered
  std::vector<std::shared_ptr<Lane>> cancel_stream;  // lanes holding a gone stream's messages
  {
    std::lock_guard<std::mutex> lock(mu_);
    switch (op) {
      case Op::kDone:
        done_ = true;
        // NOTE: a unary call answered normally is done too; only an unanswered one is news
        if (streaming_ && lane_pending_ > 0) cancel_stream = stream_lanes_;
        if (lane_ && !finish_requested_) {
          cancel = lane_;
        } else if (streaming_ || (delivered_ && !finish_requested_)) {
          bridge_->Push({nullptr, id_, kGone, ctx_.method(), {}});
        }
        break;
      case Op::kRead:
        pending_--;
        if (!streaming_) {
          if (ok) {
            delivered_ = true;
            hand_over = true;
            body = Drain(&request_);
          } else if (!finish_started_) {  // the client went away before its message
            finish_started_ = true;
            pending_++;
            stream_.Finish(grpc::Status(grpc::StatusCode::CANCELLED, "no request message"),
                           &finish_tag_);
          }
        } else if (ok) {
          // NOTE: the next read starts once this message is placed (see below), so
          // messages take their answer slots in order
          stream_message = true;
          body = Drain(&request_);
          pending_++;
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
  if (hand_over && !bridge_->TryFast(this, body)) {
    bridge_->Push({this, id_, kUnary, ctx_.method(), std::move(body)});
  }
  if (stream_message) {
    bool taken = bridge_->TryFast(this, body);
    std::lock_guard<std::mutex> lock(mu_);
    if (!taken) {
      // NOTE: once Python finished the stream it writes no more: no slot to wait for
      if (ordered_ && !finish_requested_) slots_.push_back({++last_slot_, false, false, {}});
      bridge_->Push({nullptr, id_, kMessage, ctx_.method(), std::move(body)});
      announced_ = true;
    } else if (!announced_) {  // Python serves the stream's end, and stops it
      bridge_->Push({nullptr, id_, kOpen, ctx_.method(), {}});
      announced_ = true;
    }
    stream_.Read(&request_, &read_tag_);
  }
  if (cancel) cancel->Cancel(this);
  for (auto& lane : cancel_stream) lane->CancelStream(this);
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

bool Call::Finished() { return done_ && pending_ == 0 && finish_started_ && lane_pending_ == 0; }

bool Call::AddLaneSlot(std::shared_ptr<Lane> lane, uint64_t* slot) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!ordered_ || finish_requested_ || done_) return false;
  *slot = ++last_slot_;
  slots_.push_back({*slot, true, false, {}});
  lane_pending_++;
  if (std::find(stream_lanes_.begin(), stream_lanes_.end(), lane) == stream_lanes_.end()) {
    stream_lanes_.push_back(std::move(lane));
  }
  return true;
}

void Call::DropLaneSlot(uint64_t slot) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!slots_.empty() && slots_.back().id == slot) slots_.pop_back();
  lane_pending_--;
}

void Call::FillLane(uint64_t slot, std::string body, bool skip) {
  std::lock_guard<std::mutex> lock(mu_);
  lane_pending_--;
  for (Slot& s : slots_) {
    if (s.id == slot) {
      s.filled = true;
      if (!skip) s.body = std::move(body);
      break;
    }
  }
  MoveSlots();
  StartWrite();
}

void Call::MoveSlots() {
  while (!slots_.empty() && slots_.front().filled) {
    if (!slots_.front().body.empty() && !write_failed_) {
      writes_.push_back(std::move(slots_.front().body));
    }
    slots_.pop_front();
  }
}

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
  if (!slots_.empty()) {  // a stream answer: the oldest slot Python owes, else the last
    bool placed = false;
    for (Slot& s : slots_) {
      if (!s.lane && !s.filled) {
        s.filled = true;
        s.body = std::move(body);
        placed = true;
        break;
      }
    }
    if (!placed) slots_.push_back({++last_slot_, false, true, std::move(body)});
    MoveSlots();
  } else {
    writes_.push_back(std::move(body));
  }
  StartWrite();
}

void Call::Finish(grpc::Status status) {
  std::lock_guard<std::mutex> lock(mu_);
  if (finish_requested_) return;
  finish_requested_ = true;
  status_ = std::move(status);
  for (Slot& s : slots_) {  // Python answers no more; lanes' answers are still sent first
    if (!s.lane) s.filled = true;
  }
  MoveSlots();
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
  } else if (finish_requested_ && slots_.empty()) {
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
  m.attr("OPEN") = static_cast<int>(kOpen);
  py::class_<CallHandle>(m, "Call")
      .def("finish", &CallHandle::Finish, py::arg("response"))
      .def("abort", &CallHandle::Abort, py::arg("code"), py::arg("message"))
      .def_property_readonly("method", &CallHandle::method)
      .def_property_readonly("peer", &CallHandle::peer)
      .def_property_readonly("answered", &CallHandle::answered);
  m.attr("FAILED") = static_cast<int>(kFailed);
  py::class_<Batch>(m, "Batch")
      .def_property_readonly("inputs", &Batch::inputs)
      .def_property_readonly("wanted", &Batch::wanted)
      .def_property_readonly("rows", &Batch::rows)
      .def_property_readonly("size", &Batch::size)
      .def_property_readonly("dispatch_ns", &Batch::dispatch_ns)
      .def_property_readonly("merge_ns", &Batch::merge_ns)
      .def_property_readonly("arrivals", &Batch::arrivals)
      .def_property_readonly("row_counts", &Batch::row_counts)
      .def("answer", &Batch::Answer, py::arg("outputs"), py::arg("index") = -1)
      .def("fail", &Batch::Fail, py::arg("index"), py::arg("code"), py::arg("message"))
      .def("fail_unanswered", &Batch::FailUnanswered, py::arg("code"), py::arg("message"))
      .def("outcomes", &Batch::Outcomes)
      .def("send", &Batch::Send);
  py::class_<Lane, std::shared_ptr<Lane>>(m, "Lane")
      .def_property_readonly("id", &Lane::id)
      .def("next_batch", &Lane::NextBatch)
      .def("close", &Lane::Close)
      .def("open", &Lane::open)
      .def("stop", &Lane::Stop)
      .def("outstanding", &Lane::Outstanding)
      .def("queued", &Lane::Queued)
      .def("abort_queued", &Lane::AbortQueued, py::arg("code"), py::arg("message"));
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
      .def("add_lane", &Bridge::AddLane, py::arg("name"), py::arg("version"), py::arg("inputs"),
           py::arg("outputs"), py::arg("max_rows"), py::arg("delay_us"), py::arg("target_rows"),
           py::arg("max_queue"))
      .def("remove_lane", [](Bridge& b, Lane& lane) { b.RemoveLane(&lane); })
      .def("set_fast", &Bridge::SetFast, py::arg("on"))
      .def("infer_counts", &Bridge::InferCounts)
      .def("serve_http", &Bridge::ServeHttp, py::arg("host"), py::arg("port"),
           py::arg("upstream"), py::arg("max_body"), py::arg("restrict_header") = "",
           py::arg("restrict_value") = "")
      .def("http_counts", &Bridge::HttpCounts)
      .def("shutdown", &Bridge::Shutdown, py::arg("grace_s"));
}
