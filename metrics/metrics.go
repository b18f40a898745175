// Package metrics is csnap's Prometheus instrumentation, built on the
// official client library: the metric families SPEC.md ("HTTP API") and
// issue 18 ask for, on a registry of their own, with the Go runtime and
// process collectors.
//
// Families (every per-volume series has the label volume; snapshot only on
// snapshot-level series; never an initiator name):
//
//	csnap_io_operations_total{volume,kind,op}        counter   kind origin|snapshot, op read|write|unmap|flush
//	csnap_io_bytes_total{volume,kind,op}             counter   op read|write
//	csnap_io_duration_seconds{volume,kind,op}        histogram
//	csnap_copyouts_total{volume}                     counter   chunks copied out before an overwrite
//	csnap_copyout_bytes_total{volume}                counter
//	csnap_server_requests_total{volume,type}         counter   snapshot-server requests this node served
//	csnap_server_request_duration_seconds{volume,type} histogram
//	csnap_journal_commits_total{volume}              counter
//	csnap_lock_wait_duration_seconds{volume}         histogram writes waiting on read locks
//	csnap_store_size_bytes{volume}                   gauge     (served volumes)
//	csnap_store_used_bytes{volume}                   gauge
//	csnap_snapshots{volume}                          gauge     live snapshots
//	csnap_snapshot_unique_bytes{volume,snapshot}     gauge
//	csnap_snapshots_dropped_total{volume}            counter   dropped because the store was full
//	csnap_server_terms_total{volume}                 counter   terms this node began serving
//	csnap_failovers_total{volume}                    counter   terms begun after another node's
//	csnap_server_serving{volume}                     gauge     1 while this node serves the volume
//	csnap_engine_state{volume,state}                 gauge     1 for the engine's state: ok|failed|fenced|closed
//	csnap_iscsi_sessions{target}                     gauge
//	csnap_iscsi_logins_total{target,result}          counter   result: see iscsi.LoginResult
//	csnap_iscsi_connections_refused_total{reason}    counter
//	csnap_consul_up                                  gauge     1 while the node reaches its Consul agent
//	csnap_build_info{version,goversion}              gauge     always 1
//
// Hot paths use pre-bound children (Registry.IO, Registry.Volume): an
// operation costs a few atomic adds, never a label lookup. Every method is
// safe on a nil receiver, so code can run without metrics.
package metrics

import (
	"net/http"
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/csnap/csnap/target/iscsi"
)

// Kind is the kind of LU an IO went to.
type Kind string

// LU kinds.
const (
	Origin   Kind = "origin"
	Snapshot Kind = "snapshot"
)

// Latency buckets: 50 µs to about 13 s, for IO and protocol requests.
var latencyBuckets = prometheus.ExponentialBuckets(50e-6, 4, 10)

// Registry holds every csnap metric of a node.
type Registry struct {
	reg *prometheus.Registry

	ioOps, ioBytes           *prometheus.CounterVec
	ioLatency                *prometheus.HistogramVec
	copyOuts, copyOutBytes   *prometheus.CounterVec
	serverReqs               *prometheus.CounterVec
	serverLatency            *prometheus.HistogramVec
	journalCommits, dropped  *prometheus.CounterVec
	lockWaits                *prometheus.HistogramVec
	terms, failovers         *prometheus.CounterVec
	iscsiSessions            *prometheus.GaugeVec
	iscsiLogins, iscsiRefuse *prometheus.CounterVec

	state *stateCollector
}

// New returns a registry with every family registered; version is the
// build's version for csnap_build_info.
func New(version string) *Registry {
	r := &Registry{reg: prometheus.NewRegistry()}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
		r.reg.MustRegister(v)
		return v
	}
	histogram := func(name, help string, labels ...string) *prometheus.HistogramVec {
		v := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: latencyBuckets}, labels)
		r.reg.MustRegister(v)
		return v
	}
	r.ioOps = counter("csnap_io_operations_total", "IO commands executed, by volume, LU kind and operation.", "volume", "kind", "op")
	r.ioBytes = counter("csnap_io_bytes_total", "Bytes read and written, by volume, LU kind and operation.", "volume", "kind", "op")
	r.ioLatency = histogram("csnap_io_duration_seconds", "Time to execute an IO command at the backend.", "volume", "kind", "op")
	r.copyOuts = counter("csnap_copyouts_total", "Origin chunks copied out to the snapshot store before being overwritten.", "volume")
	r.copyOutBytes = counter("csnap_copyout_bytes_total", "Bytes copied out to the snapshot store.", "volume")
	r.serverReqs = counter("csnap_server_requests_total", "Snapshot-server requests this node served, by type.", "volume", "type")
	r.serverLatency = histogram("csnap_server_request_duration_seconds", "Time to answer a snapshot-server request.", "volume", "type")
	r.journalCommits = counter("csnap_journal_commits_total", "Metadata journal commits of the snapshot store.", "volume")
	r.lockWaits = histogram("csnap_lock_wait_duration_seconds", "Time origin writes waited for snapshot read locks.", "volume")
	r.dropped = counter("csnap_snapshots_dropped_total", "Snapshots dropped because the snapshot store was full.", "volume")
	r.terms = counter("csnap_server_terms_total", "Terms this node began serving the volume.", "volume")
	r.failovers = counter("csnap_failovers_total", "Terms this node began after another node had served the volume.", "volume")
	r.iscsiSessions = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "csnap_iscsi_sessions", Help: "iSCSI sessions logged in, by target (\"\" for discovery)."}, []string{"target"})
	r.reg.MustRegister(r.iscsiSessions)
	r.iscsiLogins = counter("csnap_iscsi_logins_total", "iSCSI login attempts by target and result (auth_failed counts CHAP failures).", "target", "result")
	r.iscsiRefuse = counter("csnap_iscsi_connections_refused_total", "iSCSI connections closed at accept by a limit.", "reason")

	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "csnap_build_info", Help: "Build information; always 1."}, []string{"version", "goversion"})
	build.WithLabelValues(version, runtime.Version()).Set(1)
	r.reg.MustRegister(build)

	r.state = newStateCollector()
	r.reg.MustRegister(r.state)
	r.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// Handler serves the exposition format.
func (r *Registry) Handler() http.Handler {
	if r == nil {
		return http.NotFoundHandler()
	}
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Gatherer is the registry, for tests and custom exposition.
func (r *Registry) Gatherer() prometheus.Gatherer { return r.reg }

// IOMetrics counts the IO of one LU kind of one volume.
type IOMetrics struct {
	read, write, unmap, flush opMetrics
}

// opMetrics are one operation's pre-bound series (bytes nil for unmap and
// flush).
type opMetrics struct {
	ops, bytes prometheus.Counter
	lat        prometheus.Observer
}

// IO returns the pre-bound IO metrics of volume's LUs of kind k.
func (r *Registry) IO(volume string, k Kind) *IOMetrics {
	if r == nil {
		return nil
	}
	op := func(name string, withBytes bool) opMetrics {
		m := opMetrics{ops: r.ioOps.WithLabelValues(volume, string(k), name), lat: r.ioLatency.WithLabelValues(volume, string(k), name)}
		if withBytes {
			m.bytes = r.ioBytes.WithLabelValues(volume, string(k), name)
		}
		return m
	}
	return &IOMetrics{read: op("read", true), write: op("write", true), unmap: op("unmap", false), flush: op("flush", false)}
}

func (o *opMetrics) done(n int, d time.Duration) {
	o.ops.Inc()
	if o.bytes != nil && n > 0 {
		o.bytes.Add(float64(n))
	}
	o.lat.Observe(d.Seconds())
}

// Read counts a read of n bytes that took d.
func (m *IOMetrics) Read(n int, d time.Duration) {
	if m != nil {
		m.read.done(n, d)
	}
}

// Write counts a write of n bytes that took d.
func (m *IOMetrics) Write(n int, d time.Duration) {
	if m != nil {
		m.write.done(n, d)
	}
}

// Unmap counts an unmap that took d.
func (m *IOMetrics) Unmap(d time.Duration) {
	if m != nil {
		m.unmap.done(0, d)
	}
}

// Flush counts a flush that took d.
func (m *IOMetrics) Flush(d time.Duration) {
	if m != nil {
		m.flush.done(0, d)
	}
}

// VolumeMetrics counts what a volume's snapshot server does on this node.
type VolumeMetrics struct {
	r                                      *Registry
	volume                                 string
	copyOuts, copyOutBytes, commits, drops prometheus.Counter
	lockWait                               prometheus.Observer
	mu                                     sync.Mutex
	requests                               map[string]requestMetrics
}

type requestMetrics struct {
	n   prometheus.Counter
	lat prometheus.Observer
}

// Volume returns the pre-bound server-side metrics of volume.
func (r *Registry) Volume(volume string) *VolumeMetrics {
	if r == nil {
		return nil
	}
	return &VolumeMetrics{
		r: r, volume: volume,
		copyOuts:     r.copyOuts.WithLabelValues(volume),
		copyOutBytes: r.copyOutBytes.WithLabelValues(volume),
		commits:      r.journalCommits.WithLabelValues(volume),
		drops:        r.dropped.WithLabelValues(volume),
		lockWait:     r.lockWaits.WithLabelValues(volume),
		requests:     map[string]requestMetrics{},
	}
}

// Request counts a snapshot-server request of type typ answered in d.
func (v *VolumeMetrics) Request(typ string, d time.Duration) {
	if v == nil {
		return
	}
	v.mu.Lock()
	m, ok := v.requests[typ]
	if !ok {
		m = requestMetrics{v.r.serverReqs.WithLabelValues(v.volume, typ), v.r.serverLatency.WithLabelValues(v.volume, typ)}
		v.requests[typ] = m
	}
	v.mu.Unlock()
	m.n.Inc()
	m.lat.Observe(d.Seconds())
}

// CopyOut counts chunks copied out, bytes in all.
func (v *VolumeMetrics) CopyOut(chunks int, bytes int64) {
	if v == nil {
		return
	}
	v.copyOuts.Add(float64(chunks))
	v.copyOutBytes.Add(float64(bytes))
}

// JournalCommit counts a metadata journal commit.
func (v *VolumeMetrics) JournalCommit() {
	if v != nil {
		v.commits.Inc()
	}
}

// LockWait records how long an origin write waited for read locks.
func (v *VolumeMetrics) LockWait(d time.Duration) {
	if v != nil {
		v.lockWait.Observe(d.Seconds())
	}
}

// SnapshotDropped counts a snapshot dropped because the store was full.
func (v *VolumeMetrics) SnapshotDropped() {
	if v != nil {
		v.drops.Inc()
	}
}

// TermBegun counts a term this node began serving the volume; failover
// says another node served the term before.
func (v *VolumeMetrics) TermBegun(failover bool) {
	if v == nil {
		return
	}
	v.r.terms.WithLabelValues(v.volume).Inc()
	if failover {
		v.r.failovers.WithLabelValues(v.volume).Inc()
	}
}

// ISCSIObserver returns an iscsi.Observer that keeps the iSCSI families.
func (r *Registry) ISCSIObserver() iscsi.Observer {
	if r == nil {
		return nil
	}
	return iscsiObserver{r}
}

type iscsiObserver struct{ r *Registry }

func (o iscsiObserver) LoginDone(target string, res iscsi.LoginResult) {
	o.r.iscsiLogins.WithLabelValues(target, string(res)).Inc()
	if res == iscsi.LoginOK {
		o.r.iscsiSessions.WithLabelValues(target).Inc()
	}
}

func (o iscsiObserver) SessionEnded(target string) {
	o.r.iscsiSessions.WithLabelValues(target).Dec()
}

func (o iscsiObserver) ConnectionRefused(why iscsi.RefusalReason) {
	o.r.iscsiRefuse.WithLabelValues(string(why)).Inc()
}
