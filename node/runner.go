package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"

	"github.com/sirupsen/logrus"
)

// runner is the serve/shutdown skeleton of both modes (-dev and cluster):
// listeners are opened up front and closed together if starting fails;
// each serving loop runs in its own goroutine; wait returns when ctx ends
// or the first loop fails.
type runner struct {
	listeners []net.Listener
	wg        sync.WaitGroup
	mu        sync.Mutex
	errc      chan error // the first serving error
}

// listen opens a listener on addr; on error every listener opened so far
// is closed and the error names what (e.g. "iSCSI portal").
func (r *runner) listen(what, addr string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		r.closeAll()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	r.listeners = append(r.listeners, l)
	return l, nil
}

// closeAll closes every listener.
func (r *runner) closeAll() {
	for _, l := range r.listeners {
		l.Close()
	}
}

func (r *runner) errs() chan error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.errc == nil {
		r.errc = make(chan error, 1)
	}
	return r.errc
}

// serve runs f in a goroutine; its error, if the first, ends wait.
func (r *runner) serve(f func() error) {
	errc := r.errs()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		if err := f(); err != nil {
			select {
			case errc <- err:
			default:
			}
		}
	}()
}

// wait blocks until ctx ends (nil) or a serving loop fails (its error).
func (r *runner) wait(ctx context.Context, log *logrus.Entry) error {
	select {
	case <-ctx.Done():
		log.Info("stopping")
		return nil
	case err := <-r.errs():
		return err
	}
}

// serveHTTP serves hs on l (over TLS if tls: hs.TLSConfig holds the
// certificate) until hs is shut down.
func serveHTTP(what string, hs *http.Server, l net.Listener, tls bool) func() error {
	return func() error {
		var err error
		if tls {
			err = hs.ServeTLS(l, "", "")
		} else {
			err = hs.Serve(l)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	}
}

func httpScheme(tls bool) string {
	if tls {
		return "https://"
	}
	return "http://"
}

// or returns s, or def when s is empty.
func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
