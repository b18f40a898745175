// Command csnap-admin manages csnap volumes and snapshots through any node's
// HTTP API (the node forwards to the volume's snapshot server).
//
//	csnap-admin [-addr HOST:PORT] COMMAND [ARGS] [--json]
//
// Exit codes: 0 done, 1 the operation failed, 2 usage error. Errors are one
// line on stderr saying what failed and why.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/csnap/csnap/api"
)

const usage = `usage: csnap-admin [-addr HOST:PORT] [-token-file FILE] [-ca-file FILE] COMMAND [ARGS] [--json]

  volume create NAME --origin PATH --store PATH [--size N] [--chunk-size 64KiB]
                [--initiators IQN,...] [--force]
  volume set NAME --initiators IQN,...   (an empty list "" allows every initiator)
  volume list
  volume status NAME
  volume reset-state NAME [--snapshot SNAP]
  volume recover NAME [--accept-data-loss]
  snapshot create VOLUME SNAP [--priority N] [--writable]
  snapshot delete VOLUME SNAP
  snapshot list VOLUME
  server VOLUME
  clients VOLUME
  check VOLUME
` + tlsUsage + `

The node's address comes from -addr, else $CSNAP_HTTP_ADDR, else 127.0.0.1:7862
(https://HOST:PORT for a node serving the API over TLS; -ca-file or
$CSNAP_HTTP_CACERT names the CA to verify it with).
The API token comes from $CSNAP_HTTP_TOKEN, else the file -token-file or
$CSNAP_HTTP_TOKEN_FILE, else (for a node on this host) ./csnap-dev/api-token,
the token csnapd -dev generates in its default data directory.
--force formats a store that holds data that is not a csnap store.
`

// version is set at build time (make build: git describe).
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr, isTerminal(os.Stderr)))
}

// usageError is a mistake in the command line (exit 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// args is a command line split into positionals and --flags; flags may come
// before or after positionals, as "--name value" or "--name=value".
type args struct {
	pos   []string
	flags map[string]string
}

// parseArgs splits argv; valued lists the flags that take a value, the rest
// are booleans.
func parseArgs(argv []string, valued map[string]bool, allowed map[string]bool) (args, error) {
	a := args{flags: map[string]string{}}
	for i := 0; i < len(argv); i++ {
		s := argv[i]
		if s == "--" {
			a.pos = append(a.pos, argv[i+1:]...)
			break
		}
		if !strings.HasPrefix(s, "-") || s == "-" {
			a.pos = append(a.pos, s)
			continue
		}
		name := strings.TrimLeft(s, "-")
		val, hasVal := "", false
		if k, v, ok := strings.Cut(name, "="); ok {
			name, val, hasVal = k, v, true
		}
		if !allowed[name] {
			return a, usagef("unknown flag --%s", name)
		}
		if valued[name] && !hasVal {
			if i+1 >= len(argv) {
				return a, usagef("flag --%s needs a value", name)
			}
			i++
			val = argv[i]
		}
		if !valued[name] {
			if hasVal {
				b, err := strconv.ParseBool(val)
				if err != nil {
					return a, usagef("flag --%s takes true or false, not %q", name, val)
				}
				val = strconv.FormatBool(b)
			} else {
				val = "true"
			}
		}
		a.flags[name] = val
	}
	return a, nil
}

// parseSize reads "65536", "64KiB", "64K", "1GiB", "1G" (binary units).
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"B", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSuffix(t, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(t), 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size (e.g. 65536, 64KiB, 1GiB)", s)
	}
	return n * mult, nil
}

type env struct {
	ctx      context.Context
	c        *api.Client
	out      io.Writer
	errw     io.Writer
	json     bool
	terminal bool
}

// globalFlags are the flags that come before the command.
var globalFlags = map[string]bool{"addr": true, "token-file": true, "ca-file": true}

func run(ctx context.Context, argv []string, getenv func(string) string, stdout, stderr io.Writer, terminal bool) int {
	g := map[string]string{"addr": getenv("CSNAP_HTTP_ADDR"), "token-file": getenv("CSNAP_HTTP_TOKEN_FILE"), "ca-file": getenv("CSNAP_HTTP_CACERT")}
	if g["addr"] == "" {
		g["addr"] = "127.0.0.1:7862"
	}
	// Global flags come first.
	for len(argv) > 0 && strings.HasPrefix(argv[0], "-") {
		name, val, hasVal := strings.Cut(strings.TrimLeft(argv[0], "-"), "=")
		if !globalFlags[name] {
			break
		}
		if !hasVal {
			if len(argv) < 2 {
				fmt.Fprintf(stderr, "csnap-admin: -%s needs a value\n", name)
				return 2
			}
			val, argv = argv[1], argv[1:]
		}
		g[name], argv = val, argv[1:]
	}
	addr := g["addr"]
	if len(argv) == 1 && (argv[0] == "version" || argv[0] == "-version" || argv[0] == "--version") {
		fmt.Fprintln(stdout, "csnap-admin", version)
		return 0
	}
	if len(argv) == 0 || argv[0] == "help" || argv[0] == "-h" || argv[0] == "--help" {
		fmt.Fprint(stderr, usage)
		if len(argv) == 0 {
			return 2
		}
		return 0
	}
	token, err := findToken(addr, g["token-file"], getenv)
	if err != nil {
		fmt.Fprintf(stderr, "csnap-admin: %s\n", oneLine(err.Error()))
		return 2
	}
	c := api.NewClient(addr, token)
	if g["ca-file"] != "" {
		if err := useCA(c, g["ca-file"]); err != nil {
			fmt.Fprintf(stderr, "csnap-admin: %s\n", oneLine(err.Error()))
			return 2
		}
	}
	e := &env{ctx: ctx, c: c, out: stdout, errw: stderr, terminal: terminal}
	err = dispatch(e, argv)
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "csnap-admin: %s (csnap-admin help for usage)\n", ue.msg)
		return 2
	default:
		fmt.Fprintf(stderr, "csnap-admin: %s\n", oneLine(err.Error()))
		return 1
	}
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// command describes one subcommand's arguments.
type command struct {
	npos   int
	valued map[string]bool
	bools  []string
	run    func(e *env, a args) error
}

func commands() map[string]command {
	return map[string]command{
		"volume create":   {1, map[string]bool{"origin": true, "store": true, "size": true, "chunk-size": true, "initiators": true}, []string{"force"}, volumeCreate},
		"volume set":      {1, map[string]bool{"initiators": true}, nil, volumeSet},
		"volume list":     {0, nil, nil, volumeList},
		"volume status":   {1, nil, nil, volumeStatus},
		"volume recover":  {1, nil, []string{"accept-data-loss"}, volumeRecover},
		"snapshot create": {2, map[string]bool{"priority": true}, []string{"writable"}, snapshotCreate},
		"snapshot delete": {2, nil, nil, snapshotDelete},
		"snapshot list":   {1, nil, nil, snapshotList},
		"server":          {1, nil, nil, serverCmd},
		"clients":         {1, nil, nil, clientsCmd},
		"check":           {1, nil, nil, checkCmd},

		"volume reset-state": {1, map[string]bool{"snapshot": true}, nil, volumeResetState}, // resetstate.go
	}
}

func dispatch(e *env, argv []string) error {
	cmds := commands()
	name := argv[0]
	rest := argv[1:]
	if name == "tls" {
		return tlsCmd(e, rest)
	}
	if name == "volume" || name == "snapshot" {
		if len(rest) == 0 {
			return usagef("%s needs a subcommand", name)
		}
		name, rest = name+" "+rest[0], rest[1:]
	}
	c, ok := cmds[name]
	if !ok {
		return usagef("unknown command %q", name)
	}
	allowed := map[string]bool{"json": true}
	for f := range c.valued {
		allowed[f] = true
	}
	for _, f := range c.bools {
		allowed[f] = true
	}
	a, err := parseArgs(rest, c.valued, allowed)
	if err != nil {
		return err
	}
	if len(a.pos) != c.npos {
		return usagef("%s takes %d argument(s), got %d", name, c.npos, len(a.pos))
	}
	e.json = a.flags["json"] == "true"
	return c.run(e, a)
}

// show prints v as JSON with --json, else calls text.
func (e *env) show(v any, text func(w io.Writer)) {
	if e.json {
		enc := json.NewEncoder(e.out)
		enc.SetIndent("", "  ")
		enc.Encode(v)
		return
	}
	tw := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
	text(tw)
	tw.Flush()
}

// progress shows an elapsed-time line on a terminal while a long operation
// runs; it returns a function that clears it.
func (e *env) progress(what string) func() {
	if !e.terminal || e.json {
		return func() {}
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(stopped)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		spin := `|/-\`
		for i := 0; ; i++ {
			select {
			case <-done:
				fmt.Fprint(e.errw, "\r\033[K")
				return
			case <-t.C:
				fmt.Fprintf(e.errw, "\r%c %s (%.1fs)", spin[i%4], what, time.Since(start).Seconds())
			}
		}
	}()
	return func() { close(done); <-stopped }
}

// initiatorList parses --initiators: comma-separated iSCSI names.
func initiatorList(s string) ([]string, error) {
	out := []string{}
	for _, n := range strings.Split(s, ",") {
		if n = strings.TrimSpace(n); n != "" {
			out = append(out, n)
		}
	}
	if err := api.ValidInitiators(out); err != nil {
		return nil, usagef("--initiators: %s", strings.TrimPrefix(err.Error(), api.ErrBadRequest.Error()+": "))
	}
	return out, nil
}

func volumeCreate(e *env, a args) error {
	req := api.CreateVolume{Name: a.pos[0], Origin: a.flags["origin"], Store: a.flags["store"], Force: a.flags["force"] == "true"}
	if req.Origin == "" || req.Store == "" {
		return usagef("volume create needs --origin PATH and --store PATH")
	}
	if err := api.ValidName("volume", req.Name); err != nil {
		return usageError{err.Error()}
	}
	var err error
	if s, ok := a.flags["initiators"]; ok {
		if req.Initiators, err = initiatorList(s); err != nil {
			return err
		}
	}
	if s := a.flags["size"]; s != "" {
		if req.Size, err = parseSize(s); err != nil {
			return usagef("--size: %v", err)
		}
	}
	if s := a.flags["chunk-size"]; s != "" {
		if req.ChunkSize, err = parseSize(s); err != nil {
			return usagef("--chunk-size: %v", err)
		}
		if req.ChunkSize < 4096 || req.ChunkSize > 1<<20 || req.ChunkSize&(req.ChunkSize-1) != 0 {
			return usagef("--chunk-size must be a power of two from 4KiB to 1MiB")
		}
	}
	stop := e.progress("formatting the snapshot store")
	var v api.Volume
	err = e.c.Do(e.ctx, "POST", api.Path("volumes"), req, &v)
	stop()
	if err != nil {
		return fmt.Errorf("creating volume %s: %w", req.Name, err)
	}
	e.show(v, func(w io.Writer) {
		fmt.Fprintf(w, "volume %s created (%s, chunk %s)\n", v.Name, human(v.Size), human(v.ChunkSize))
	})
	return nil
}

func volumeSet(e *env, a args) error {
	s, ok := a.flags["initiators"]
	if !ok {
		return usagef("volume set needs a setting: --initiators IQN,... (\"\" for any initiator)")
	}
	list, err := initiatorList(s)
	if err != nil {
		return err
	}
	var v api.Volume
	if err := e.c.Do(e.ctx, "PATCH", api.Path("volumes", a.pos[0]), api.SetVolume{Initiators: &list}, &v); err != nil {
		return fmt.Errorf("changing volume %s: %w", a.pos[0], err)
	}
	e.show(v, func(w io.Writer) {
		if len(v.Initiators) == 0 {
			fmt.Fprintf(w, "volume %s: any initiator may log in\n", v.Name)
			return
		}
		fmt.Fprintf(w, "volume %s: initiators %s\n", v.Name, strings.Join(v.Initiators, ", "))
	})
	return nil
}

func volumeList(e *env, a args) error {
	var vs []api.Volume
	if err := e.c.Do(e.ctx, "GET", api.Path("volumes"), nil, &vs); err != nil {
		return fmt.Errorf("listing volumes: %w", err)
	}
	e.show(vs, func(w io.Writer) {
		fmt.Fprintln(w, "NAME\tSIZE\tCHUNK\tSNAPSHOTS\tSTORE USED\tSERVER")
		for _, v := range vs {
			fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s/%s\t%s\n", v.Name, human(v.Size), human(v.ChunkSize), v.Snapshots, human(v.StoreUsed), human(v.StoreSize), orDash(v.Server))
		}
	})
	return nil
}

func volumeStatus(e *env, a args) error {
	var v api.Volume
	if err := e.c.Do(e.ctx, "GET", api.Path("volumes", a.pos[0]), nil, &v); err != nil {
		return fmt.Errorf("volume %s: %w", a.pos[0], err)
	}
	e.show(v, func(w io.Writer) {
		fmt.Fprintf(w, "volume\t%s\norigin\t%s\nstore\t%s\nsize\t%s\nchunk size\t%s\nsnapshots\t%d\nstore used\t%s of %s\nserver\t%s\n",
			v.Name, v.Origin, v.Store, human(v.Size), human(v.ChunkSize), v.Snapshots, human(v.StoreUsed), human(v.StoreSize), orDash(v.Server))
		if len(v.Initiators) > 0 {
			fmt.Fprintf(w, "initiators\t%s\n", strings.Join(v.Initiators, ", "))
		}
		if v.Refused != "" {
			fmt.Fprintf(w, "refused here\t%s\n", v.Refused)
		}
		if v.Engine != "" {
			fmt.Fprintf(w, "engine\t%s\n", v.Engine)
		}
		if v.EngineError != "" {
			fmt.Fprintf(w, "engine error\t%s\n", v.EngineError)
		}
		if v.IOError != "" {
			fmt.Fprintf(w, "io error\t%s (flushes fail until volume recover)\n", v.IOError)
		}
		if lc := v.LocationCache; lc != nil {
			fmt.Fprintf(w, "location cache\t%d hits, %d misses, %d chunks (%s)\n", lc.Hits, lc.Misses, lc.Entries, human(int64(lc.Bytes)))
		}
	})
	return nil
}

func snapshotCreate(e *env, a args) error {
	req := api.CreateSnapshot{Name: a.pos[1], Writable: a.flags["writable"] == "true"}
	if err := api.ValidName("snapshot", req.Name); err != nil {
		return usageError{err.Error()}
	}
	if p := a.flags["priority"]; p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < -128 || n > 127 {
			return usagef("--priority takes a number from -128 to 127, not %q", p)
		}
		req.Priority = n
	}
	var s api.Snapshot
	if err := e.c.Do(e.ctx, "POST", api.Path("volumes", a.pos[0], "snapshots"), req, &s); err != nil {
		return fmt.Errorf("creating snapshot %s of %s: %w", req.Name, a.pos[0], err)
	}
	e.show(s, func(w io.Writer) {
		fmt.Fprintf(w, "snapshot %s of %s created (id %d), target %s\n", s.Name, a.pos[0], s.ID, s.Target)
	})
	return nil
}

func snapshotDelete(e *env, a args) error {
	stop := e.progress("deleting snapshot " + a.pos[1])
	err := e.c.Do(e.ctx, "DELETE", api.Path("volumes", a.pos[0], "snapshots", a.pos[1]), nil, nil)
	stop()
	if err != nil {
		return fmt.Errorf("deleting snapshot %s of %s: %w", a.pos[1], a.pos[0], err)
	}
	e.show(map[string]string{"deleted": a.pos[1], "volume": a.pos[0]}, func(w io.Writer) {
		fmt.Fprintf(w, "snapshot %s of %s deleted\n", a.pos[1], a.pos[0])
	})
	return nil
}

func snapshotList(e *env, a args) error {
	var ss []api.Snapshot
	if err := e.c.Do(e.ctx, "GET", api.Path("volumes", a.pos[0], "snapshots"), nil, &ss); err != nil {
		return fmt.Errorf("listing snapshots of %s: %w", a.pos[0], err)
	}
	e.show(ss, func(w io.Writer) {
		fmt.Fprintln(w, "NAME\tID\tCREATED\tPRIORITY\tWRITABLE\tUNIQUE\tSHARED")
		for _, s := range ss {
			name := s.Name
			if s.Dropped {
				name += " (dropped)"
			}
			fmt.Fprintf(w, "%s\t%d\t%s\t%d\t%v\t%s\t%s\n", name, s.ID, s.Created.Local().Format("2006-01-02 15:04:05"), s.Priority, s.Writable, human(s.UniqueBytes), human(s.SharedBytes))
		}
	})
	return nil
}

func serverCmd(e *env, a args) error {
	var s api.Server
	if err := e.c.Do(e.ctx, "GET", api.Path("volumes", a.pos[0], "server"), nil, &s); err != nil {
		return fmt.Errorf("server of %s: %w", a.pos[0], err)
	}
	e.show(s, func(w io.Writer) {
		fmt.Fprintf(w, "node\t%s\naddress\t%s\nterm\t%d\nsince\t%s\n", s.Node, s.Address, s.Term, s.Since.Local().Format(time.RFC3339))
	})
	return nil
}

func clientsCmd(e *env, a args) error {
	var cs []api.ClientEntry
	if err := e.c.Do(e.ctx, "GET", api.Path("volumes", a.pos[0], "clients"), nil, &cs); err != nil {
		return fmt.Errorf("clients of %s: %w", a.pos[0], err)
	}
	e.show(cs, func(w io.Writer) {
		fmt.Fprintln(w, "CLIENT\tNODE\tSTATE\tLOCKS")
		for _, c := range cs {
			fmt.Fprintf(w, "%s\t%s\t%s\t%d\n", c.ID, c.Node, c.State, c.Locks)
		}
	})
	return nil
}

// errProblems makes check exit 1 when the store has problems.
var errProblems = errors.New("problems found")

func checkCmd(e *env, a args) error {
	stop := e.progress("checking the store of " + a.pos[0])
	var r api.CheckReport
	err := e.c.Do(e.ctx, "POST", api.Path("volumes", a.pos[0], "check"), nil, &r)
	stop()
	if err != nil {
		return fmt.Errorf("checking %s: %w", a.pos[0], err)
	}
	e.show(r, func(w io.Writer) {
		for _, p := range r.Problems {
			fmt.Fprintln(w, p)
		}
		if r.Clean {
			fmt.Fprintf(w, "%s: clean (%d metadata blocks checked)\n", r.Volume, r.Checked)
		}
	})
	if !r.Clean {
		return fmt.Errorf("%s: %d %w", a.pos[0], len(r.Problems), errProblems)
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// human formats a byte count with binary units.
func human(n int64) string {
	const units = "KMGTPE"
	if n < 1024 {
		return fmt.Sprintf("%dB", n)
	}
	f := float64(n)
	i := -1
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if f == float64(int64(f)) {
		return fmt.Sprintf("%d%ciB", int64(f), units[i])
	}
	return fmt.Sprintf("%.1f%ciB", f, units[i])
}
