package iscsi

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-acc
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// TestPollingReader: data comes through whether it is polled or waited
// for; polls that find nothing back off (doubling, up to maxPollBackoff)
// and a poll that finds data resets that; nothing is polled while a
// command executes or when every slot is taken; the end of the stream is
// reported.
func TestPollingReader(t *testing.T) {
	cl, sv := tcpPair(t)
	slots := newPollSlots(2) // one slot
	busy := false
	r := newPollingReader(sv, 200*time.Microsecond, &slots, func() bool { return !busy })
	if r.raw == nil {
		t.Fatal("a TCP connection should be pollable")
	}
	buf := make([]byte, 64)
	read := func(want string) {
		t.Helper()
		n, err := r.Read(buf)
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("Read = %q, %v; want %q", buf[:n], err, want)
		}
	}

	// Data already there: the first poll finds it.
	cl.Write([]byte("a"))
	time.Sleep(10 * time.Millisecond)
	read("a")
	if r.backoff != 0 || r.skip != 0 {
		t.Fatalf("after a successful poll: backoff %d skip %d", r.backoff, r.skip)
	}

	// Data comes later than the budget: the poll finds nothing, the read
	// waits, and the next reads skip polling: 1, then 2, then 4...
	for i, wantBackoff := range []int{1, 2, 4, 8} {
		go func() {
			time.Sleep(5 * time.Millisecond)
			cl.Write([]byte{'b' + byte(i)})
		}()
		read(string(rune('b' + i)))
		if r.backoff != wantBackoff || r.skip != wantBackoff {
			t.Fatalf("poll %d found nothing: backoff %d skip %d, want %d", i+1, r.backoff, r.skip, wantBackoff)
		}
		// Skipped reads do not poll and do not touch the backoff.
		for range wantBackoff {
			cl.Write([]byte("s"))
			read("s")
		}
		if r.skip != 0 || r.backoff != wantBackoff {
			t.Fatalf("after %d skipped reads: skip %d backoff %d", wantBackoff, r.skip, r.backoff)
		}
	}
	r.backoff = maxPollBackoff
	go func() { time.Sleep(5 * time.Millisecond); cl.Write([]byte("m")) }()
	read("m")
	if r.backoff != maxPollBackoff {
		t.Fatalf("backoff %d, want at most %d", r.backoff, maxPollBackoff)
	}
	r.skip, r.backoff = 0, 3
	cl.Write([]byte("r"))
	time.Sleep(10 * time.Millisecond)
	read("r")
	if r.backoff != 0 {
		t.Fatalf("a poll that found data left backoff %d", r.backoff)
	}

	// A command executing: no poll (the backoff is untouched even though
	// the data comes late).
	busy = true
	go func() { time.Sleep(5 * time.Millisecond); cl.Write([]byte("x")) }()
	read("x")
	if r.backoff != 0 || r.skip != 0 {
		t.Fatalf("polled while a command executed: backoff %d skip %d", r.backoff, r.skip)
	}
	busy = false

	// Every slot taken: no poll either.
	if !slots.acquire() {
		t.Fatal("the only slot is taken")
	}
	if slots.acquire() {
		t.Fatal("a second slot of one")
	}
	go func() { time.Sleep(5 * time.Millisecond); cl.Write([]byte("y")) }()
	read("y")
	if r.backoff != 0 || r.skip != 0 {
		t.Fatalf("polled without a slot: backoff %d skip %d", r.backoff, r.skip)
	}
	slots.release()
	if slots.busy.Load() != 0 {
		t.Fatalf("%d slots busy after every release", slots.busy.Load())
	}

	// A large write arrives whole, in pieces as the socket delivers it.
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<14)
	go cl.Write(big)
	got := make([]byte, len(big))
	if _, err := io.ReadFull(r, got); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("256 KiB through the polling reader: %v, equal %v", err, bytes.Equal(got, big))
	}

	// The end of the stream is reported, polled or not.
	cl.Close()
	if n, err := r.Read(buf); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("after the peer closed: %d, %v; want EOF", n, err)
	}
}

// TestPollingReaderDisabled: a negative budget or a connection that is
// not a socket never polls.
func TestPollingReaderDisabled(t *testing.T) {
	_, sv := tcpPair(t)
	slots := newPollSlots(1)
	if r := newPollingReader(sv, -1, &slots, func() bool { return true }); r.raw != nil {
		t.Fatal("a negative budget still polls")
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if r := newPollingReader(a, time.Millisecond, &slots, func() bool { return true }); r.raw != nil {
		t.Fatal("net.Pipe has no socket to poll")
	}
	if s := newPollSlots(8); s.max != 4 {
		t.Fatalf("8 processors: %d polling slots, want 4", s.max)
	}
}
