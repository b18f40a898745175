package metrics

import (
	"sort"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// VolumeState is what a volume looks like from this node when Prometheus
// scrapes it. The store and snapshot fields are known on the node that
// serves the volume only.
type VolumeState struct {
	Serving bool
	// Engine is the snapshot store engine's state on this node: "ok",
	// "failed", "fenced" or "closed"; "" when this node has no engine.
	Engine               string
	StoreSize, StoreUsed int64
	Snapshots            []SnapshotState
}

// SnapshotState is one live snapshot.
type SnapshotState struct {
	Name        string
	UniqueBytes int64
}

// engineStates are the values csnap_engine_state reports (one series
// each, 1 for the current state).
var engineStates = []string{"ok", "failed", "fenced", "closed"}

// stateCollector reads the volumes' state through callbacks at scrape time,
// so nothing on the IO path keeps gauges up to date.
type stateCollector struct {
	mu      sync.Mutex
	volumes map[string]func() VolumeState
	consul  func() bool

	storeSize, storeUsed, snapshots, unique, serving, engine, consulUp *prometheus.Desc
}

func newStateCollector() *stateCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &stateCollector{
		volumes:   map[string]func() VolumeState{},
		storeSize: d("csnap_store_size_bytes", "Size of the volume's snapshot store (on the node that serves it).", "volume"),
		storeUsed: d("csnap_store_used_bytes", "Bytes of the snapshot store in use.", "volume"),
		snapshots: d("csnap_snapshots", "Live snapshots of the volume.", "volume"),
		unique:    d("csnap_snapshot_unique_bytes", "Bytes held by this snapshot alone.", "volume", "snapshot"),
		serving:   d("csnap_server_serving", "1 while this node serves the volume.", "volume"),
		engine:    d("csnap_engine_state", "1 for the state of the volume's snapshot store engine on this node.", "volume", "state"),
		consulUp:  d("csnap_consul_up", "1 while this node reaches its Consul agent.", nil...),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.storeSize, c.storeUsed, c.snapshots, c.unique, c.serving, c.engine, c.consulUp} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	names := make([]string, 0, len(c.volumes))
	fs := map[string]func() VolumeState{}
	for n, f := range c.volumes {
		names = append(names, n)
		fs[n] = f
	}
	consul := c.consul
	c.mu.Unlock()
	sort.Strings(names)
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, n := range names {
		st := fs[n]()
		gauge(c.serving, b2f(st.Serving), n)
		if st.Engine != "" {
			for _, s := range engineStates {
				gauge(c.engine, b2f(s == st.Engine), n, s)
			}
		}
		if !st.Serving {
			continue
		}
		gauge(c.storeSize, float64(st.StoreSize), n)
		gauge(c.storeUsed, float64(st.StoreUsed), n)
		gauge(c.snapshots, float64(len(st.Snapshots)), n)
		for _, s := range st.Snapshots {
			gauge(c.unique, float64(s.UniqueBytes), n, s.Name)
		}
	}
	if consul != nil {
		gauge(c.consulUp, b2f(consul()))
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// SetVolumeState makes scrapes report volume's state as f returns it
// (f must be quick: it runs on every scrape); a nil f forgets the volume.
func (r *Registry) SetVolumeState(volume string, f func() VolumeState) {
	if r == nil {
		return
	}
	r.state.mu.Lock()
	defer r.state.mu.Unlock()
	if f == nil {
		delete(r.state.volumes, volume)
		return
	}
	r.state.volumes[volume] = f
}

// SetConsulUp makes scrapes report csnap_consul_up as f returns it.
func (r *Registry) SetConsulUp(f func() bool) {
	if r == nil {
		return
	}
	r.state.mu.Lock()
	r.state.consul = f
	r.state.mu.Unlock()
}
