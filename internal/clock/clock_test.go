package clock

import (
	"context"
	"testing"
	"time"
)

func TestSleep(t *testing.T) {
	start := time.Now()
	if !Sleep(context.Background(), 20*time.Millisecond) || time.Since(start) < 20*time.Millisecond {
		t.Fatal("Sleep did not wait its duration")
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(10*time.Millisecond, cancel)
	start = time.Now()
	if Sleep(ctx, time.Minute) || time.Since(start) > 10*time.Second {
		t.Fatal("Sleep did not end with its context")
	}
}
