//go:build race

package snapstore

// raceEnabled: the race detector slows the sweeping tests about 15x; they
// test fewer points under it (CSNAP_CRASH_STRIDE / -soak override).
const raceEnabled = true
