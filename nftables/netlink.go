package nftables

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"
)

// NetlinkLister is the kernel's Lister: netlink dumps of the table's
// chain and set names and of one chain's rules. Neither runs nft: `nft
// list chain` loads the table's sets and their elements first (62 ms at
// 10,000 services, every drift check), where the dump of one chain's rules
// takes under a millisecond.
type NetlinkLister struct {
	family uint8
	table  string
}

var _ Lister = (*NetlinkLister)(nil)

// NewNetlinkLister returns the Lister of table in family ("ip" or "ip6").
func NewNetlinkLister(family knftables.Family, table string) *NetlinkLister {
	f := uint8(unix.NFPROTO_IPV4)
	if family == knftables.IPv6Family {
		f = unix.NFPROTO_IPV6
	}
	return &NetlinkLister{family: f, table: table}
}

// dump sends one nf_tables dump request of type msg with attrs and
// returns the replies.
func (l *NetlinkLister) dump(msg uint16, attrs func(*netlink.AttributeEncoder)) ([]netlink.Message, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ae := netlink.NewAttributeEncoder()
	if attrs != nil {
		attrs(ae)
	}
	b, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	// struct nfgenmsg: family, version, resource id (big endian).
	data := append([]byte{l.family, unix.NFNETLINK_V0, 0, 0}, b...)
	return c.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | int(msg)), Flags: netlink.Request | netlink.Dump},
		Data:   data,
	})
}

// attributes decodes the attributes of a reply (after its nfgenmsg) and
// calls fn with each one's type.
func attributes(m netlink.Message, fn func(typ uint16, ad *netlink.AttributeDecoder)) error {
	if len(m.Data) < 4 {
		return fmt.Errorf("short nf_tables message (%d bytes)", len(m.Data))
	}
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		fn(ad.Type(), ad)
	}
	return ad.Err()
}

// Objects implements Lister.
func (l *NetlinkLister) Objects(context.Context) (Objects, error) {
	sets, err := l.dump(unix.NFT_MSG_GETSET, func(ae *netlink.AttributeEncoder) { ae.String(unix.NFTA_SET_TABLE, l.table) })
	if isNotFound(err) {
		return Objects{}, nil
	}
	if err != nil {
		return Objects{}, fmt.Errorf("listing the sets of table %s: %w", l.table, err)
	}
	out := Objects{Exists: true}
	if out.Sets, out.Maps, err = parseSets(sets); err != nil {
		return Objects{}, err
	}
	// The kernel dumps the chains of every table of the family (names
	// only, no rules: fast even beside iptables-nft's 10,000 chains).
	chains, err := l.dump(unix.NFT_MSG_GETCHAIN, nil)
	if err != nil {
		return Objects{}, fmt.Errorf("listing chains: %w", err)
	}
	if out.Chains, err = parseChains(chains, l.table); err != nil {
		return Objects{}, err
	}
	return out, nil
}

// parseSets returns the names of the sets and of the maps of a set dump,
// anonymous ones left out.
func parseSets(msgs []netlink.Message) (sets, maps []string, err error) {
	for _, m := range msgs {
		var name string
		var flags uint32
		if err := attributes(m, func(typ uint16, ad *netlink.AttributeDecoder) {
			switch typ {
			case unix.NFTA_SET_NAME:
				name = ad.String()
			case unix.NFTA_SET_FLAGS:
				flags = ad.Uint32()
			}
		}); err != nil {
			return nil, nil, err
		}
		switch {
		case flags&unix.NFT_SET_ANONYMOUS != 0 || anonymous(name):
		case flags&unix.NFT_SET_MAP != 0:
			maps = append(maps, name)
		default:
			sets = append(sets, name)
		}
	}
	return sets, maps, nil
}

// parseChains returns the names of table's chains in a chain dump.
func parseChains(msgs []netlink.Message, table string) ([]string, error) {
	var out []string
	for _, m := range msgs {
		var t, name string
		if err := attributes(m, func(typ uint16, ad *netlink.AttributeDecoder) {
			switch typ {
			case unix.NFTA_CHAIN_TABLE:
				t = ad.String()
			case unix.NFTA_CHAIN_NAME:
				name = ad.String()
			}
		}); err != nil {
			return nil, err
		}
		if t == table {
			out = append(out, name)
		}
	}
	return out, nil
}

// CountRules implements Lister: the kernel dumps the rules of that chain
// alone.
func (l *NetlinkLister) CountRules(_ context.Context, chain string) (int, error) {
	rules, err := l.dump(unix.NFT_MSG_GETRULE, func(ae *netlink.AttributeEncoder) {
		ae.String(unix.NFTA_RULE_TABLE, l.table)
		ae.String(unix.NFTA_RULE_CHAIN, chain)
	})
	if isNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("listing the rules of chain %s: %w", chain, err)
	}
	return len(rules), nil
}
