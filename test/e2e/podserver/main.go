// Command podserver is the workload of the e2e test bed's pods: it answers
// every TCP connection and every UDP datagram with its own name and the
// source address it saw, so that a test knows which backend it reached and
// whether the client's address was kept or masqueraded.
//
//	TCP: on accept it writes "name=<name> src=<ip:port>\n" and then echoes
//	     everything it reads until the client closes (a long-lived
//	     connection can be checked by writing to it).
//	UDP: each datagram gets "name=<name> src=<ip:port> data=<payload>\n".
//
// It listens on 0.0.0.0 and [::] (IPv6 only) on every port of -ports (TCP
// and UDP each) and prints "ready" on stdout once all listeners are open.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
)

func main() {
	name := flag.String("name", "", "Name to answer with, for example b/web-1.")
	ports := flag.String("ports", "8080", "Comma-separated ports to serve on, TCP and UDP each.")
	flag.Parse()
	if *name == "" {
		*name, _ = os.Hostname()
	}
	if err := run(*name, *ports); err != nil {
		fmt.Fprintln(os.Stderr, "podserver:", err)
		os.Exit(1)
	}
}

func run(name, ports string) error {
	errc := make(chan error, 1)
	for _, p := range strings.Split(ports, ",") {
		port, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || port <= 0 || port > 65535 {
			return fmt.Errorf("bad port %q", p)
		}
		// One socket per family ("tcp6" is IPV6_V6ONLY), so that an IPv4
		// client's address never shows as ::ffff:a.b.c.d.
		for _, family := range []string{"4", "6"} {
			ln, err := net.ListenTCP("tcp"+family, &net.TCPAddr{Port: port})
			if err != nil {
				return err
			}
			pc, err := net.ListenUDP("udp"+family, &net.UDPAddr{Port: port})
			if err != nil {
				return err
			}
			go func() { errc <- serveTCP(ln, name) }()
			go func() { errc <- serveUDP(pc, name) }()
		}
	}
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sig:
		return nil
	case err := <-errc:
		return err
	}
}

func serveTCP(ln *net.TCPListener, name string) error {
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		go func() {
			defer c.Close()
			if _, err := fmt.Fprintf(c, "name=%s src=%s\n", name, c.RemoteAddr()); err != nil {
				return
			}
			// A plain read/write loop: io.Copy(c, c) would splice the
			// socket into itself.
			_, _ = io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, make([]byte, 4096))
		}()
	}
}

func serveUDP(pc *net.UDPConn, name string) error {
	buf := make([]byte, 64*1024)
	for {
		n, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return err
		}
		reply := fmt.Appendf(nil, "name=%s src=%s data=%s\n", name, from, buf[:n])
		if _, err := pc.WriteToUDPAddrPort(reply, from); err != nil {
			fmt.Fprintln(os.Stderr, "podserver: udp reply:", err)
		}
	}
}
