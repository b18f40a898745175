package snapstore

// Err returns the error that made the engine unusable (it wraps
// ErrFailed: an IO error, or a failed flush of the store by another user
// of the device), or nil while it works. A closed engine is not failed.
// csnapd's health check reports it. It is State's error for EngineFailed.
func (e *Engine) Err() error {
	if st, err := e.State(); st == EngineFailed {
		return err
	}
	return nil
}
