package scsi

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

// richState has every field of LUState set, with several of each.
func richState() *LUState {
	a := NexusID{InitiatorPort: "iqn.1994-05.com.redhat:a,i,0x23d000000001", TargetPort: "iqn.2024-01.io.csnap:t1,t,0x1"}
	b := NexusID{InitiatorPort: "iqn.1994-05.com.redhat:b,i,0x23d000000002", TargetPort: "iqn.2024-01.io.csnap:t1,t,0x2"}
	c := NexusID{InitiatorPort: "iqn.1994-05.com.redhat:a,i,0x23d000000001", TargetPort: "iqn.2024-01.io.csnap:t1,t,0x2"}
	return &LUState{
		Generation: 0xdeadbeef,
		Registrations: []Registration{
			{Key: 0x1122334455667788, InitiatorPort: a.InitiatorPort, TargetPort: a.TargetPort, RelativeTargetPort: 1},
			{Key: 0xffffffffffffffff, InitiatorPort: b.InitiatorPort, AllTargetPorts: true, RelativeTargetPort: 2},
			{Key: 7, InitiatorPort: c.InitiatorPort, TargetPort: c.TargetPort, RelativeTargetPort: 0xffff},
		},
		Reservation: &PersistentReservation{Type: prTypeWERO, Key: 0x1122334455667788, Holder: a},
		Legacy:      &NexusID{InitiatorPort: b.InitiatorPort, TargetPort: b.TargetPort},
		Nexuses: map[NexusID][]UnitAttention{
			a: {uaReservationsPreempt, uaCapacityChanged, uaModeChanged},
			b: {uaPowerOnReset},
			c: {},
			{InitiatorPort: "", TargetPort: ""}: {uaReportedLUNsChanged, uaRegistrationsPreemp,
				uaReservationsRelease, uaBusReset, uaBusDeviceReset, uaPowerOn, uaModeChanged, uaCapacityChanged},
		},
		Capacity: -1 << 40,
	}
}

// normalized returns a copy of s where empty slices and maps are nil, the
// form UnmarshalLUState returns.
func normalized(s *LUState) *LUState {
	c := s.Clone()
	if len(c.Registrations) == 0 {
		c.Registrations = nil
	}
	if len(c.Nexuses) == 0 {
		c.Nexuses = nil
	}
	for k, v := range c.Nexuses {
		if len(v) == 0 {
			c.Nexuses[k] = nil
		}
	}
	return c
}

func mustMarshal(t testing.TB, s *LUState) []byte {
	t.Helper()
	b, err := s.MarshalBinary()
	if err != nil {
		t.Fatalf("MarshalBinary: %v", err)
	}
	return b
}

func TestStateCodecRoundTrip(t *testing.T) {
	for name, s := range map[string]*LUState{
		"rich":          richState(),
		"zero":          {},
		"empty":         {Registrations: []Registration{}, Nexuses: map[NexusID][]UnitAttention{}},
		"capacity only": {Capacity: 1 << 62},
		"legacy only":   {Legacy: &NexusID{InitiatorPort: "i"}},
		"all registrants reservation": {
			Generation:    1,
			Registrations: []Registration{{Key: 1, InitiatorPort: "i", AllTargetPorts: true}},
			Reservation:   &PersistentReservation{Type: prTypeEAAR, Key: 1},
		},
		"long names": {Legacy: &NexusID{InitiatorPort: strings.Repeat("x", maxCodecString), TargetPort: "é"}},
	} {
		t.Run(name, func(t *testing.T) {
			b := mustMarshal(t, s)
			got, err := UnmarshalLUState(b)
			if err != nil {
				t.Fatalf("UnmarshalLUState: %v", err)
			}
			if want := normalized(s); !reflect.DeepEqual(got, want) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
			}
			if again := mustMarshal(t, got); !bytes.Equal(again, b) {
				t.Fatalf("re-encoding differs:\n got %x\nwant %x", again, b)
			}
		})
	}
}

func TestStateCodecZero(t *testing.T) {
	b := mustMarshal(t, &LUState{})
	want := []byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	if !bytes.Equal(b, want) {
		t.Fatalf("zero state encodes as %x, want %x", b, want)
	}
	s, err := UnmarshalLUState(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s, &LUState{}) {
		t.Fatalf("zero state decodes as %+v", s)
	}
}

// TestStateCodecLayout pins the byte layout documented in statecodec.go.
func TestStateCodecLayout(t *testing.T) {
	s := &LUState{
		Generation:    0x01020304,
		Registrations: []Registration{{Key: 9, InitiatorPort: "i", TargetPort: "t", AllTargetPorts: true, RelativeTargetPort: 0x0a0b}},
		Reservation:   &PersistentReservation{Type: 5, Key: 9, Holder: NexusID{"i", "t"}},
		Legacy:        &NexusID{"L", ""},
		Nexuses: map[NexusID][]UnitAttention{
			{"j", "t"}: {0x2a09},
			{"i", "t"}: {0x2900, 0x2a03},
		},
		Capacity: 0x1122334455667788,
	}
	want := []byte{
		1,          // version
		1, 2, 3, 4, // generation
		0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, // capacity
		3,                      // flags
		5,                      // reservation type
		0, 0, 0, 0, 0, 0, 0, 9, // reservation key
		0, 1, 'i', 0, 1, 't', // holder
		0, 1, 'L', 0, 0, // legacy
		0, 1, // registrations
		0, 0, 0, 0, 0, 0, 0, 9, 0, 1, 'i', 0, 1, 't', 1, 0x0a, 0x0b,
		0, 2, // nexuses
		0, 1, 'i', 0, 1, 't', 2, 0x29, 0x00, 0x2a, 0x03,
		0, 1, 'j', 0, 1, 't', 1, 0x2a, 0x09,
	}
	if got := mustMarshal(t, s); !bytes.Equal(got, want) {
		t.Fatalf("encoding:\n got %x\nwant %x", got, want)
	}
}

func TestStateCodecDeterministic(t *testing.T) {
	want := mustMarshal(t, richState())
	for range 20 { // map iteration order varies from run to run
		if got := mustMarshal(t, richState()); !bytes.Equal(got, want) {
			t.Fatal("two encodings of the same state differ")
		}
	}
}

func TestStateCodecTruncated(t *testing.T) {
	for _, s := range []*LUState{richState(), {}} {
		b := mustMarshal(t, s)
		for n := range len(b) {
			if _, err := UnmarshalLUState(b[:n]); err == nil {
				t.Fatalf("prefix of %d of %d bytes decoded without error", n, len(b))
			} else if n > 0 && !strings.Contains(err.Error(), "truncated") {
				t.Errorf("prefix of %d bytes: error %q does not say truncated", n, err)
			}
		}
	}
}

func TestStateCodecRejects(t *testing.T) {
	valid := mustMarshal(t, richState())
	zero := mustMarshal(t, &LUState{})
	with := func(b []byte, off int, v ...byte) []byte {
		c := bytes.Clone(b)
		copy(c[off:], v)
		return c
	}
	for name, tc := range map[string]struct {
		in   []byte
		want string
	}{
		"trailing byte":      {append(bytes.Clone(valid), 0), "1 trailing bytes"},
		"trailing bytes":     {append(bytes.Clone(zero), 9, 2, 3), "3 trailing bytes"},
		"version 0":          {with(zero, 0, 0), "format version 0"},
		"version 2":          {with(valid, 0, 2), "format version 2"},
		"unknown flag":       {with(zero, 13, 4), "unknown bits"},
		"all ports not bool": {with(mustMarshal(t, &LUState{Registrations: []Registration{{}}}), 14+2+12, 2), "want 0 or 1"},
		"string too long": {append(with(zero[:14], 13, 2), append([]byte{0x04, 0x01}, make([]byte, 1025)...)...),
			"1025 bytes, over 1024"},
		"too many UAs": {append(with(zero, 16, 0, 1), 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
			"9 unit attentions"},
		"nexuses unsorted": {append(with(zero, 16, 0, 2), 0, 1, 'b', 0, 0, 0, 0, 1, 'a', 0, 0, 0), "does not sort after"},
		"nexus duplicated": {append(with(zero, 16, 0, 2), 0, 1, 'a', 0, 0, 0, 0, 1, 'a', 0, 0, 0), "does not sort after"},
		"forged reg count": {with(zero, 14, 0xff, 0xff), "registration count is 65535"},
		"forged nexuses":   {with(zero, 16, 0xff, 0xff), "nexus count is 65535"},
		"empty":            {nil, "truncated"},
	} {
		t.Run(name, func(t *testing.T) {
			s, err := UnmarshalLUState(tc.in)
			if err == nil {
				t.Fatalf("decoded %+v, want an error", s)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestStateCodecMarshalBounds(t *testing.T) {
	long := strings.Repeat("x", maxCodecString+1)
	for name, s := range map[string]*LUState{
		"long initiator": {Registrations: []Registration{{InitiatorPort: long}}},
		"long holder":    {Reservation: &PersistentReservation{Holder: NexusID{TargetPort: long}}},
		"long legacy":    {Legacy: &NexusID{InitiatorPort: long}},
		"long nexus":     {Nexuses: map[NexusID][]UnitAttention{{InitiatorPort: long}: nil}},
		"too many UAs":   {Nexuses: map[NexusID][]UnitAttention{{}: make([]UnitAttention, maxPendingUA+1)}},
		"too many regs":  {Registrations: make([]Registration, maxCodecCount+1)},
	} {
		if b, err := s.MarshalBinary(); err == nil {
			t.Errorf("%s: encoded to %d bytes, want an error", name, len(b))
		}
	}
}

func FuzzUnmarshalLUState(f *testing.F) {
	for _, s := range []*LUState{richState(), {}, {Legacy: &NexusID{"i", "t"}, Capacity: 4096}} {
		f.Add(mustMarshal(f, s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := UnmarshalLUState(b)
		if err != nil {
			return
		}
		enc, err := s.MarshalBinary()
		if err != nil {
			t.Fatalf("decoded state does not encode: %v", err)
		}
		// The encoding is canonical: only MarshalBinary's output decodes.
		if !bytes.Equal(enc, b) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", enc, b)
		}
		s2, err := UnmarshalLUState(enc)
		if err != nil {
			t.Fatalf("re-encoding does not decode: %v", err)
		}
		if !reflect.DeepEqual(normalized(s2), normalized(s)) {
			t.Fatalf("state changed:\n got %+v\nwant %+v", s2, s)
		}
	})
}
