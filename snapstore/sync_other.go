//go:build !linux

package snapstore

import "os"

func fdatasync(f *os.File) error { return f.Sync() }

func adviseRandom(*os.File) {}
