package conntrack

// SetFamilies makes Cleanup look at fams until the returned func is called.
func SetFamilies(fams ...Family) (restore func()) {
	old := families
	families = fams
	return func() { families = old }
}
