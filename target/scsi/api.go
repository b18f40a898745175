// Package scsi implements the SCSI command sets that csnap's logical units
// present (SPC-4 primary commands, SBC-3 block commands), independent of the
// transport that carries them. The iSCSI transport (package iscsi) turns PDUs
// into Commands and Results; a Backend (a plain file, or a snapshot client)
// holds the data.
//
// The layering follows tgt: transport, command sets and backing stores are
// kept apart. Nothing in this package knows about TCP, PDUs or Consul.
package scsi

import (
	"context"
	"fmt"
)

// BlockSize is the logical block size of every csnap logical unit.
const BlockSize = 512

// Backend is the storage behind one logical unit. Implementations must be
// safe for concurrent use: the transport executes many commands at once.
type Backend interface {
	// ReadAt fills all of p from byte offset off, or returns an error.
	// p may come from a pool and hold another command's bytes: a nil
	// error promises that every byte of p was written (holes as zeros),
	// since all of p goes to the initiator.
	ReadAt(p []byte, off int64) error
	// WriteAt writes all of p at off. With fua set the data is durable
	// (survives a crash) when WriteAt returns.
	WriteAt(p []byte, off int64, fua bool) error
	// Flush makes every write that completed before the call durable.
	Flush() error
	// Unmap deallocates [off, off+length); later reads of it return zeros.
	Unmap(off, length int64) error
	// Size is the capacity in bytes, a multiple of BlockSize.
	Size() int64
	// ReadOnly reports whether writes must be refused with DATA PROTECT.
	ReadOnly() bool
	// Identity is the logical unit's identity, the same on every node that
	// exports it, so multipath groups the paths.
	Identity() Identity
}

// BlockLocker is implemented by a Backend that several targets serve at
// once (the nodes of a cluster). LockBlocks takes an exclusive lock on
// bytes [off, off+n) against every other LockBlocks of the same logical
// unit on any target; COMPARE AND WRITE runs under it, which makes it
// atomic across targets (against other COMPARE AND WRITEs; ordinary
// writes are ordered against it on each target only). check, called just
// before the write, reports whether the lock is still certainly held: if
// not, nothing is written and the command ends with ABORTED COMMAND, for
// the initiator to retry. unlock releases the lock.
type BlockLocker interface {
	LockBlocks(ctx context.Context, off int64, n int) (check func() error, unlock func(), err error)
}

// Identity names a logical unit in INQUIRY data.
type Identity struct {
	// Serial is the unit serial number (VPD page 0x80), printable ASCII.
	Serial string
	// NAA is the 16-byte NAA IEEE Registered Extended designator
	// (VPD page 0x83, NAA type 6). Its first nibble must be 6.
	NAA [16]byte
	// Product is the INQUIRY product identification (at most 16 chars).
	Product string
}

// Port describes the target port a command arrived through. Every node has
// its own relative port id and target port group, so ALUA and multipath can
// tell the paths apart while the logical unit identity stays the same.
type Port struct {
	// Name is the SCSI target port name, e.g. "iqn...:vol,t,0x0001".
	Name string
	// TargetName is the SCSI target device name (the target IQN).
	TargetName string
	// RelativeID is the relative target port identifier (1..65535).
	RelativeID uint16
	// GroupID is the target port group id (REPORT TARGET PORT GROUPS).
	GroupID uint16
}

// Nexus identifies an I_T nexus: the initiator port and the target port a
// command came through. Reservations and unit attentions are per nexus.
type Nexus struct {
	// InitiatorPort is the SCSI initiator port name:
	// initiator name + ",i,0x" + ISID in hex (RFC 7143 section 4.4).
	InitiatorPort string
	// Port is the target port.
	Port Port
}

func (n Nexus) String() string { return n.InitiatorPort + "/" + n.Port.Name }

// TaskAttr is the SAM task attribute of a command.
type TaskAttr uint8

// Task attributes (values as carried in the iSCSI SCSI Command PDU).
const (
	TaskUntagged TaskAttr = 0
	TaskSimple   TaskAttr = 1
	TaskOrdered  TaskAttr = 2
	TaskHead     TaskAttr = 3
	TaskACA      TaskAttr = 4
)

// Command is one SCSI command as the transport delivers it.
type Command struct {
	CDB   []byte
	LUN   uint64 // the LUN as addressed (single level, flat)
	Nexus Nexus
	Attr  TaskAttr
	// DataOut holds all the data the initiator sent with the command
	// (write direction), gathered by the transport.
	DataOut []byte
	// ExpectedLen is the initiator's expected data transfer length.
	ExpectedLen uint32
	// DataInBuf, when not nil, is a buffer of at least ExpectedLen bytes
	// that the command may read into and return as Result.Data, sparing an
	// allocation. The transport owns it.
	DataInBuf []byte
}

// Status codes (SAM-5).
const (
	StatusGood                = 0x00
	StatusCheckCondition      = 0x02
	StatusConditionMet        = 0x04
	StatusBusy                = 0x08
	StatusReservationConflict = 0x18
	StatusTaskSetFull         = 0x28
	StatusACAActive           = 0x30
	StatusTaskAborted         = 0x40
)

// Sense keys (SPC-4).
const (
	SenseNoSense        = 0x0
	SenseRecoveredError = 0x1
	SenseNotReady       = 0x2
	SenseMediumError    = 0x3
	SenseHardwareError  = 0x4
	SenseIllegalRequest = 0x5
	SenseUnitAttention  = 0x6
	SenseDataProtect    = 0x7
	SenseBlankCheck     = 0x8
	SenseAbortedCommand = 0xb
	SenseMiscompare     = 0xe
)

// Result is the outcome of a command.
type Result struct {
	Status byte
	// Sense is fixed-format sense data (SPC-4 4.5.3) when Status is
	// CHECK CONDITION.
	Sense []byte
	// Data is the data-in for the initiator (read direction), already cut
	// to the allocation length the CDB allows. The transport cuts it to the
	// expected length and reports residuals.
	Data []byte
	// DataOutLen is, for commands that take data from the initiator, the
	// number of bytes the CDB called for (e.g. blocks*512 for WRITE(10)).
	// The transport compares it with what the initiator sent to report
	// residual overflow or underflow. Zero for other commands.
	DataOutLen int
	// Err, when not nil, is the backend failure behind a CHECK CONDITION,
	// for the caller to log (this package logs nothing).
	Err error
}

// SenseError is an error that carries its own sense key and additional sense
// code. A Backend returns one to choose what the initiator sees (for example
// a dropped snapshot returns MEDIUM ERROR rather than stale data).
type SenseError struct {
	Key  byte
	ASC  byte
	ASCQ byte
	Err  error // the cause, for logs
}

func (e *SenseError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("sense %#x/%#02x/%#02x: %v", e.Key, e.ASC, e.ASCQ, e.Err)
	}
	return fmt.Sprintf("sense %#x/%#02x/%#02x", e.Key, e.ASC, e.ASCQ)
}

func (e *SenseError) Unwrap() error { return e.Err }

// Executor runs SCSI commands for one SCSI target (all its LUNs). The iSCSI
// transport holds one per target and calls it concurrently.
type Executor interface {
	Execute(ctx context.Context, cmd *Command) Result
	// LUNs lists the LUNs that exist, for REPORT LUNS and discovery.
	LUNs() []uint64
	// NexusLost is called when an I_T nexus ends (session logout or drop).
	NexusLost(n Nexus)
	// TaskManagement performs a task management function that affects
	// logical unit state (LUN RESET, TARGET WARM/COLD RESET, CLEAR TASK SET,
	// ABORT TASK SET) after the transport has aborted the affected tasks.
	TaskManagement(fn TMF, lun uint64, n Nexus) TMFResponse
}

// TMF is a task management function (values as in the iSCSI Task Management
// Function Request PDU).
type TMF uint8

// Task management functions.
const (
	TMFAbortTask        TMF = 1
	TMFAbortTaskSet     TMF = 2
	TMFClearACA         TMF = 3
	TMFClearTaskSet     TMF = 4
	TMFLogicalUnitReset TMF = 5
	TMFTargetWarmReset  TMF = 6
	TMFTargetColdReset  TMF = 7
	TMFTaskReassign     TMF = 8
)

// TMFResponse is the response code of a task management function (values as
// in the iSCSI Task Management Function Response PDU).
type TMFResponse uint8

// Task management responses.
const (
	TMFComplete          TMFResponse = 0
	TMFTaskNotExist      TMFResponse = 1
	TMFLUNNotExist       TMFResponse = 2
	TMFTaskStillAllegian TMFResponse = 3
	TMFReassignNotSupp   TMFResponse = 4
	TMFNotSupported      TMFResponse = 5
	TMFAuthFailed        TMFResponse = 6
	TMFRejected          TMFResponse = 255
)
