package main

import "errors"

// applyConfigFile fills the settings of o that were not set by a flag (set
// holds the names of flags given) from the HCL file at path.
func applyConfigFile(o *options, path string, set map[string]bool) error {
	return errors.New("configuration files: not implemented yet")
}
