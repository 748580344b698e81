package nftables

import (
	"encoding/binary"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// reply builds a netlink reply of nf_tables: nfgenmsg, then attributes.
func reply(t *testing.T, attrs func(ae *netlink.AttributeEncoder)) netlink.Message {
	t.Helper()
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	attrs(ae)
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return netlink.Message{Data: append([]byte{unix.NFPROTO_IPV4, 0, 0, 0}, b...)}
}

// TestNetlinkParsing: the names of our table's chains, of its sets and of
// its maps, anonymous sets left out; a malformed reply is an error.
func TestNetlinkParsing(t *testing.T) {
	set := func(name string, flags uint32) netlink.Message {
		return reply(t, func(ae *netlink.AttributeEncoder) {
			ae.String(unix.NFTA_SET_TABLE, TableName)
			ae.String(unix.NFTA_SET_NAME, name)
			ae.Uint32(unix.NFTA_SET_FLAGS, flags)
		})
	}
	sets, maps, err := parseSets([]netlink.Message{
		set("hairpin", 0), set("service-ips", unix.NFT_SET_MAP), set("__set0", unix.NFT_SET_ANONYMOUS|unix.NFT_SET_CONSTANT),
		set("aff-x", unix.NFT_SET_TIMEOUT|unix.NFT_SET_EVAL), set("__map1", unix.NFT_SET_MAP),
	})
	if err != nil || !cmp.Equal(sets, []string{"hairpin", "aff-x"}) || !cmp.Equal(maps, []string{"service-ips"}) {
		t.Errorf("parseSets: %v %v %v", sets, maps, err)
	}
	chain := func(table, name string) netlink.Message {
		return reply(t, func(ae *netlink.AttributeEncoder) {
			ae.String(unix.NFTA_CHAIN_TABLE, table)
			ae.String(unix.NFTA_CHAIN_NAME, name)
		})
	}
	chains, err := parseChains([]netlink.Message{chain(TableName, "services"), chain("kube-proxy", "services"), chain("nat", "PREROUTING"), chain(TableName, "svc-ns/web/http/tcp")}, TableName)
	if err != nil || !cmp.Equal(chains, []string{"services", "svc-ns/web/http/tcp"}) {
		t.Errorf("parseChains: %v %v", chains, err)
	}
	short := netlink.Message{Data: []byte{2, 0}}
	if _, _, err := parseSets([]netlink.Message{short}); err == nil {
		t.Errorf("parseSets took a short message")
	}
	if _, err := parseChains([]netlink.Message{short}, TableName); err == nil {
		t.Errorf("parseChains took a short message")
	}
	bad := netlink.Message{Data: []byte{2, 0, 0, 0, 200, 0, 1}} // attribute length past the end
	if _, _, err := parseSets([]netlink.Message{bad}); err == nil {
		t.Errorf("parseSets took a malformed attribute")
	}
}
