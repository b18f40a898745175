package scsi

import (
	"fmt"
	"sync"
)

// MemBackend is a Backend in memory, sparse by block: unwritten and unmapped
// blocks read as zeros and report deallocated in GET LBA STATUS. It is
// meant for tests (here and in the transport's).
type MemBackend struct {
	mu       sync.RWMutex
	blocks   map[int64][]byte // block number -> BlockSize bytes
	size     int64
	readOnly bool
	id       Identity

	flushes, fuaWrites int
}

var _ Backend = (*MemBackend)(nil)
var _ LBAStatusBackend = (*MemBackend)(nil)

// NewMemBackend returns an empty MemBackend of size bytes (a multiple of
// BlockSize).
func NewMemBackend(size int64, id Identity) *MemBackend {
	return &MemBackend{blocks: make(map[int64][]byte), size: size, id: id}
}

// SetReadOnly makes the backend read-only (or writable again).
func (m *MemBackend) SetReadOnly(ro bool) {
	m.mu.Lock()
	m.readOnly = ro
	m.mu.Unlock()
}

// Resize changes the capacity; blocks past the new end are dropped.
func (m *MemBackend) Resize(size int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.size = size
	for b := range m.blocks {
		if b*BlockSize >= size {
			delete(m.blocks, b)
		}
	}
}

func (m *MemBackend) check(n int, off int64) error {
	if off < 0 || off%BlockSize != 0 || n%BlockSize != 0 || off+int64(n) > m.size {
		return fmt.Errorf("membackend: access of %d bytes at %d outside %d bytes or unaligned", n, off, m.size)
	}
	return nil
}

// ReadAt implements Backend.
func (m *MemBackend) ReadAt(p []byte, off int64) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if err := m.check(len(p), off); err != nil {
		return err
	}
	for i := 0; i < len(p); i += BlockSize {
		if b, ok := m.blocks[(off+int64(i))/BlockSize]; ok {
			copy(p[i:i+BlockSize], b)
		} else {
			clear(p[i : i+BlockSize])
		}
	}
	return nil
}

// WriteAt implements Backend.
func (m *MemBackend) WriteAt(p []byte, off int64, fua bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(len(p), off); err != nil {
		return err
	}
	for i := 0; i < len(p); i += BlockSize {
		n := (off + int64(i)) / BlockSize
		b, ok := m.blocks[n]
		if !ok {
			b = make([]byte, BlockSize)
			m.blocks[n] = b
		}
		copy(b, p[i:i+BlockSize])
	}
	if fua {
		m.fuaWrites++
	}
	return nil
}

// Flush implements Backend.
func (m *MemBackend) Flush() error {
	m.mu.Lock()
	m.flushes++
	m.mu.Unlock()
	return nil
}

// Unmap implements Backend.
func (m *MemBackend) Unmap(off, length int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(int(length), off); err != nil {
		return err
	}
	if length/BlockSize > int64(len(m.blocks)) {
		for b := range m.blocks {
			if b >= off/BlockSize && b < (off+length)/BlockSize {
				delete(m.blocks, b)
			}
		}
		return nil
	}
	for b := off / BlockSize; b < (off+length)/BlockSize; b++ {
		delete(m.blocks, b)
	}
	return nil
}

// LBAStatus implements LBAStatusBackend.
func (m *MemBackend) LBAStatus(off int64) (mapped bool, length int64, err error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if off < 0 || off >= m.size {
		return false, 0, fmt.Errorf("membackend: LBA status at %d outside %d bytes", off, m.size)
	}
	first := off / BlockSize
	_, mapped = m.blocks[first]
	end := first + 1
	if mapped {
		for end*BlockSize < m.size {
			if _, ok := m.blocks[end]; !ok {
				break
			}
			end++
		}
	} else {
		// The extent ends at the next mapped block.
		end = m.size / BlockSize
		for b := range m.blocks {
			if b > first && b < end {
				end = b
			}
		}
	}
	return mapped, (end - first) * BlockSize, nil
}

// Stats returns the number of Flush calls and of writes with fua set.
func (m *MemBackend) Stats() (flushes, fuaWrites int) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.flushes, m.fuaWrites
}

// Size implements Backend.
func (m *MemBackend) Size() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.size
}

// ReadOnly implements Backend.
func (m *MemBackend) ReadOnly() bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.readOnly
}

// Identity implements Backend.
func (m *MemBackend) Identity() Identity { return m.id }
