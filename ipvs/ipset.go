package ipvs

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"
)

// ParseSetSave parses `ipset save` output into sets, in the order listed.
// Entry options (timeout, comment, …) are dropped: IPVS mode uses none.
func ParseSetSave(data []byte) ([]*Set, error) {
	var sets []*Set
	byName := map[string]*Set{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		fs := strings.Fields(sc.Text())
		if len(fs) == 0 || strings.HasPrefix(fs[0], "#") {
			continue
		}
		switch fs[0] {
		case "create":
			if len(fs) < 3 {
				return nil, fmt.Errorf("ipset save line %d: %q: missing type", n, sc.Text())
			}
			s := &Set{Name: fs[1], Type: fs[2]}
			sets = append(sets, s)
			byName[s.Name] = s
		case "add":
			if len(fs) < 3 {
				return nil, fmt.Errorf("ipset save line %d: %q: missing entry", n, sc.Text())
			}
			s := byName[fs[1]]
			if s == nil {
				return nil, fmt.Errorf("ipset save line %d: entry of set %q listed before the set", n, fs[1])
			}
			s.Entries = append(s.Entries, fs[2])
		default:
			return nil, fmt.Errorf("ipset save line %d: unexpected %q", n, sc.Text())
		}
	}
	return sets, sc.Err()
}
