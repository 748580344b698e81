package trace

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestTokenize(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []string
		wantErr bool
	}{
		{in: `-A X  -m comment --comment "a b" -j Y`, want: []string{"-A", "X", "-m", "comment", "--comment", "a b", "-j", "Y"}},
		{in: `--comment 'it"s'`, wantErr: true}, // single quotes are characters: the double quote opens
		{in: `--comment 'a b'`, want: []string{"--comment", "'a", "b'"}},
		{in: `--comment "say \"hi\""`, want: []string{"--comment", `say "hi"`}},
		{in: `--comment "a\b\\c"`, want: []string{"--comment", `ab\c`}}, // a backslash escapes any character in quotes
		{in: `--comment a\b`, want: []string{"--comment", `a\b`}},       // and none outside
		{in: `--comment ""`, want: []string{"--comment", ""}},
		{in: `--comment a"b c"d`, want: []string{"--comment", "ab c", "d"}}, // a closing quote ends the word
		{in: `--comment "open`, wantErr: true},
		{in: `--comment "` + strings.Repeat("x", 1024) + `"`, wantErr: true}, // iptables-restore's buffer
	} {
		got, err := tokenize(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("tokenize(%q): error %v, want error %v", tc.in, err, tc.wantErr)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("tokenize(%q) (-want +got):\n%s", tc.in, diff)
		}
		if !tc.wantErr {
			back, err := tokenize(quoteArgs(got))
			if err != nil || !cmp.Equal(back, got) {
				t.Errorf("tokenize(quoteArgs(%q)) = %q, %v", got, back, err)
			}
		}
	}
}
