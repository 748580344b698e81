//go:build race

package proxy_test

// raceEnabled: allocation figures are not those of a normal build.
const raceEnabled = true
