package iscsi

import "errors"

// Observer is told of the target's events, for metrics (csnapd exports them
// to Prometheus). Its methods are called per connection and per session,
// never per command, possibly from many goroutines at once, and must not
// block.
type Observer interface {
	// LoginDone reports a finished login attempt. target is the IQN the
	// login named, "" for discovery sessions and for logins that failed
	// before naming one (never an initiator name: the cardinality of
	// metric labels stays bounded by the targets).
	LoginDone(target string, result LoginResult)
	// SessionEnded reports that a session that logged in ended.
	SessionEnded(target string)
	// ConnectionRefused reports a connection closed at accept by a limit.
	ConnectionRefused(reason RefusalReason)
}

// LoginResult classifies a login attempt.
type LoginResult string

// Login results.
const (
	LoginOK             LoginResult = "ok"
	LoginAuthFailed     LoginResult = "auth_failed"     // CHAP failed or was skipped
	LoginForbidden      LoginResult = "forbidden"       // allow-list, or reinstatement as another identity
	LoginNotFound       LoginResult = "not_found"       // no such target
	LoginRateLimited    LoginResult = "rate_limited"    // the source failed too often
	LoginInitiatorError LoginResult = "initiator_error" // malformed or inconsistent requests
	LoginError          LoginResult = "error"           // I/O, timeout, target errors
)

// RefusalReason says which limit refused a connection.
type RefusalReason string

// Refusal reasons.
const (
	RefusedConnections RefusalReason = "connections"    // MaxConnections or MaxConnectionsPerSource
	RefusedLogins      RefusalReason = "pending_logins" // MaxPendingLogins or MaxPendingLoginsPerSource
)

// nopObserver is the Observer of a Server configured without one.
type nopObserver struct{}

func (nopObserver) LoginDone(string, LoginResult)   {}
func (nopObserver) SessionEnded(string)             {}
func (nopObserver) ConnectionRefused(RefusalReason) {}

// loginResult classifies the outcome of conn.login.
func loginResult(err error) LoginResult {
	if err == nil {
		return LoginOK
	}
	var le *loginError
	if !errors.As(err, &le) {
		return LoginError
	}
	switch le.status {
	case loginAuthFailed:
		return LoginAuthFailed
	case loginForbidden:
		return LoginForbidden
	case loginNotFound, loginTargetRemoved:
		return LoginNotFound
	case loginServiceUnavail:
		return LoginRateLimited
	}
	if le.status>>8 == 2 {
		return LoginInitiatorError
	}
	return LoginError
}
