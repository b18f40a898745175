package server

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/sirupsen/logrus"
)

// Persisted shared state: the shared state lives in the server's memory
// and in the clients' replicas, so a restart of every node loses it. What
// must outlive that (the SCSI mode parameters: a MODE SELECT holds across
// restarts) is picked by Config.PersistShared from each entry and kept in
// the store's volume attributes (snapstore.Engine.SetVolumeAttrs, in the
// superblock). See the package doc, "Persisted shared state".

// persistedFormat is the first byte of the record.
const persistedFormat = 1

// persistedVersion is the version of an entry restored from the store: below
// every version a server commits (term<<32 | n, term >= 1), so a replica a
// client uploads wins over it.
const persistedVersion = 1

// encodePersisted encodes picks (key -> kept value) as the record
// described in the package doc.
func encodePersisted(picks map[string][]byte) ([]byte, error) {
	keys := make([]string, 0, len(picks))
	for k := range picks {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if len(keys) > 0xffff {
		return nil, fmt.Errorf("%d entries to persist, over 65535", len(keys))
	}
	b := []byte{persistedFormat}
	b = binary.BigEndian.AppendUint16(b, uint16(len(keys)))
	for _, k := range keys {
		v := picks[k]
		if len(k) > 0xffff || len(v) > 0xffff {
			return nil, fmt.Errorf("entry %q to persist is too long (%d bytes of value)", k, len(v))
		}
		b = binary.BigEndian.AppendUint16(b, uint16(len(k)))
		b = append(b, k...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
		b = append(b, v...)
	}
	return b, nil
}

var errPersistedFormat = errors.New("persisted shared state is not in format 1")

// decodePersisted decodes a record written by encodePersisted.
func decodePersisted(b []byte) (map[string][]byte, error) {
	if len(b) < 3 || b[0] != persistedFormat {
		return nil, errPersistedFormat
	}
	n := int(binary.BigEndian.Uint16(b[1:3]))
	b = b[3:]
	picks := make(map[string][]byte, n)
	field := func() ([]byte, bool) {
		if len(b) < 2 {
			return nil, false
		}
		l := int(binary.BigEndian.Uint16(b))
		if len(b) < 2+l {
			return nil, false
		}
		f := b[2 : 2+l]
		b = b[2+l:]
		return f, true
	}
	for i := range n {
		k, ok1 := field()
		v, ok2 := field()
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("persisted shared state: entry %d of %d truncated", i, n)
		}
		picks[string(k)] = bytes.Clone(v)
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("persisted shared state: %d trailing bytes", len(b))
	}
	return picks, nil
}

// loadPersisted restores the persisted entries into the shared state of
// a server being built (New). A record it cannot read is logged and
// ignored: the state then starts empty, as without persistence.
func (s *Server) loadPersisted() {
	s.persisted = map[string][]byte{}
	raw := s.eng.VolumeAttrs()
	if len(raw) == 0 {
		return
	}
	picks, err := decodePersisted(raw)
	if err != nil {
		s.log.WithError(err).Error("cannot read the persisted shared state; starting without it")
		return
	}
	for k, v := range picks {
		if len(s.shared) >= maxSharedEntries {
			break
		}
		s.persisted[k] = v
		s.shared[k] = &sharedEntry{version: persistedVersion, value: v}
	}
	s.log.WithField("entries", len(picks)).Info("shared state restored from the store")
}

// persistLocked records, before an update of key to value is committed,
// what of it Config.PersistShared keeps, if that changes the record. It
// writes the store (a superblock write and flush) under s.mu: such
// changes are rare (a MODE SELECT).
func (s *Server) persistLocked(ctx context.Context, key string, value []byte) error {
	pick := s.cfg.PersistShared
	if pick == nil {
		return nil
	}
	keep := pick(key, value)
	if old, ok := s.persisted[key]; ok == (keep != nil) && bytes.Equal(old, keep) {
		return nil
	}
	next := make(map[string][]byte, len(s.persisted)+1)
	for k, v := range s.persisted {
		next[k] = v
	}
	if keep == nil {
		delete(next, key)
	} else {
		next[key] = bytes.Clone(keep)
	}
	var rec []byte
	if len(next) > 0 {
		var err error
		if rec, err = encodePersisted(next); err != nil {
			return err
		}
	}
	if err := s.eng.SetVolumeAttrs(ctx, rec); err != nil {
		return fmt.Errorf("persisting shared state %q: %w", key, err)
	}
	s.persisted = next
	s.log.WithFields(logrus.Fields{"key": key, "kept": keep != nil, "bytes": len(rec)}).Info("persisted shared state changed")
	return nil
}
