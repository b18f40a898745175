package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// maxBody bounds request bodies: API requests are small.
const maxBody = 64 * 1024

// Handler serves svc under /v1/. Metrics (GET /metrics) are mounted by the
// caller, which knows what it measures.
func Handler(svc Service) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		h, err := svc.Health(r.Context())
		reply(w, http.StatusOK, h, err)
	})
	mux.HandleFunc("GET /v1/volumes", func(w http.ResponseWriter, r *http.Request) {
		v, err := svc.Volumes(r.Context())
		if v == nil {
			v = []Volume{}
		}
		reply(w, http.StatusOK, v, err)
	})
	mux.HandleFunc("POST /v1/volumes", func(w http.ResponseWriter, r *http.Request) {
		var req CreateVolume
		if err := decode(r, &req); err != nil {
			reply(w, 0, nil, err)
			return
		}
		if err := ValidName("volume", req.Name); err != nil {
			reply(w, 0, nil, err)
			return
		}
		if err := ValidInitiators(req.Initiators); err != nil {
			reply(w, 0, nil, err)
			return
		}
		v, err := svc.CreateVolume(r.Context(), req)
		reply(w, http.StatusCreated, v, err)
	})
	mux.HandleFunc("PATCH /v1/volumes/{v}", func(w http.ResponseWriter, r *http.Request) {
		var req SetVolume
		if err := decode(r, &req); err != nil {
			reply(w, 0, nil, err)
			return
		}
		if req.Initiators != nil {
			if err := ValidInitiators(*req.Initiators); err != nil {
				reply(w, 0, nil, err)
				return
			}
		}
		v, err := svc.SetVolume(r.Context(), r.PathValue("v"), req)
		reply(w, http.StatusOK, v, err)
	})
	mux.HandleFunc("GET /v1/volumes/{v}", func(w http.ResponseWriter, r *http.Request) {
		v, err := svc.Volume(r.Context(), r.PathValue("v"))
		reply(w, http.StatusOK, v, err)
	})
	mux.HandleFunc("GET /v1/volumes/{v}/snapshots", func(w http.ResponseWriter, r *http.Request) {
		s, err := svc.Snapshots(r.Context(), r.PathValue("v"))
		if s == nil {
			s = []Snapshot{}
		}
		reply(w, http.StatusOK, s, err)
	})
	mux.HandleFunc("POST /v1/volumes/{v}/snapshots", func(w http.ResponseWriter, r *http.Request) {
		var req CreateSnapshot
		if err := decode(r, &req); err != nil {
			reply(w, 0, nil, err)
			return
		}
		if err := ValidName("snapshot", req.Name); err != nil {
			reply(w, 0, nil, err)
			return
		}
		s, err := svc.CreateSnapshot(r.Context(), r.PathValue("v"), req)
		reply(w, http.StatusCreated, s, err)
	})
	mux.HandleFunc("DELETE /v1/volumes/{v}/snapshots/{s}", func(w http.ResponseWriter, r *http.Request) {
		err := svc.DeleteSnapshot(r.Context(), r.PathValue("v"), r.PathValue("s"))
		reply(w, http.StatusOK, map[string]string{"deleted": r.PathValue("s")}, err)
	})
	mux.HandleFunc("GET /v1/volumes/{v}/server", func(w http.ResponseWriter, r *http.Request) {
		s, err := svc.Server(r.Context(), r.PathValue("v"))
		reply(w, http.StatusOK, s, err)
	})
	mux.HandleFunc("GET /v1/volumes/{v}/clients", func(w http.ResponseWriter, r *http.Request) {
		c, err := svc.Clients(r.Context(), r.PathValue("v"))
		if c == nil {
			c = []ClientEntry{}
		}
		reply(w, http.StatusOK, c, err)
	})
	mux.HandleFunc("POST /v1/volumes/{v}/check", func(w http.ResponseWriter, r *http.Request) {
		c, err := svc.Check(r.Context(), r.PathValue("v"))
		reply(w, http.StatusOK, c, err)
	})
	mux.HandleFunc("POST /v1/volumes/{v}/reset-state", resetStateHandler(svc))
	if rs, ok := svc.(Recoverer); ok {
		mux.HandleFunc("POST /v1/volumes/{v}/recover", func(w http.ResponseWriter, r *http.Request) {
			var req RecoverRequest
			if r.ContentLength != 0 {
				if err := decode(r, &req); err != nil {
					reply(w, 0, nil, err)
					return
				}
			}
			c, err := rs.Recover(r.Context(), r.PathValue("v"), req)
			reply(w, http.StatusOK, c, err)
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		reply(w, 0, nil, fmt.Errorf("%w: no API endpoint %s %s", ErrNotFound, r.Method, r.URL.Path))
	})
	return mux
}

// decode reads a JSON body strictly: unknown fields and trailing data are
// errors, so a typo in a client is reported instead of ignored.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: request body: %v", ErrBadRequest, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: request body has trailing data", ErrBadRequest)
	}
	return nil
}

// errorBody is the JSON form of every error.
type errorBody struct {
	Error string `json:"error"`
}

func status(err error) int {
	switch {
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrConflict):
		return http.StatusConflict
	case errors.Is(err, ErrForbidden):
		return http.StatusForbidden
	case errors.Is(err, ErrUnavailable):
		return http.StatusServiceUnavailable
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	}
	return http.StatusInternalServerError
}

func reply(w http.ResponseWriter, code int, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		w.WriteHeader(status(err))
		json.NewEncoder(w).Encode(errorBody{Error: err.Error()})
		return
	}
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// Client talks to a node's API.
type Client struct {
	// Base is the node's address, "host:port" or a URL.
	Base string
	// Token is sent as a bearer token when set (required off loopback).
	Token string
	HTTP  *http.Client
}

// NewClient returns a client for addr with a sane timeout.
func NewClient(addr, token string) *Client {
	return &Client{Base: addr, Token: token, HTTP: &http.Client{Timeout: 5 * time.Minute}}
}

// SetTransport replaces the HTTP transport (e.g. one that trusts the
// node's CA).
func (c *Client) SetTransport(rt http.RoundTripper) { c.HTTP.Transport = rt }

// APIError is an error the node answered with.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return e.Message }

func (c *Client) url(path string) string {
	base := c.Base
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return strings.TrimRight(base, "/") + path
}

// Do sends a request and decodes the JSON answer into out (if not nil).
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url(path), rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach csnapd at %s: %w", c.Base, unwrapURLError(err))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading answer from %s: %w", c.Base, err)
	}
	if resp.StatusCode >= 300 {
		var e errorBody
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return &APIError{Status: resp.StatusCode, Message: e.Error}
		}
		return &APIError{Status: resp.StatusCode, Message: fmt.Sprintf("%s %s: HTTP %d", method, path, resp.StatusCode)}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decoding answer of %s %s: %w", method, path, err)
		}
	}
	return nil
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// Path builds an API path from escaped segments.
func Path(segs ...string) string {
	var b strings.Builder
	b.WriteString("/v1")
	for _, s := range segs {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(s))
	}
	return b.String()
}
