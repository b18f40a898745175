package snapstore

// Err returns the error that made the engine unusable (it wraps
// ErrFailed: an IO error it could not recover from), or nil while it
// works. A closed engine is not failed. csnapd's health check reports it.
func (e *Engine) Err() error {
	e.lock()
	defer e.unlock()
	return e.failed
}
