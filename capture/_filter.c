// rawcap capture filter: an eBPF socket filter on the TPACKET_V3 ring socket.
//
// Only TCP and UDP over IPv4/IPv6 (optionally behind up to two VLAN tags) reach user space.
// Everything else is decided by maps that user space rewrites while capture runs, so a
// filter change never reopens the ring. The return value is the snap length.
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/in.h>

#define F_ALLOW_IPS   (1u << 0)
#define F_ALLOW_PORTS (1u << 1)
#define F_TCP         (1u << 2)
#define F_UDP         (1u << 3)
#define F_IFACES      (1u << 4)

struct cfg_t {
    u32 snaplen;   // 0: whole packet
    u32 flags;
};

struct lpm_key_t {
    u32 prefixlen;
    u8 addr[16];   // IPv6, or IPv4 mapped as ::ffff:a.b.c.d
};

BPF_ARRAY(cfg, struct cfg_t, 1);
BPF_LPM_TRIE(allow_ip, struct lpm_key_t, u8, 4096);
BPF_LPM_TRIE(deny_ip, struct lpm_key_t, u8, 4096);
BPF_HASH(allow_port, u16, u8, 4096);
BPF_HASH(deny_port, u16, u8, 4096);
BPF_HASH(ifaces, u32, u8, 4096);
// 0: seen TCP/UDP, 1: accepted, 2: rejected by the maps, 3: not TCP/UDP
BPF_PERCPU_ARRAY(counters, u64, 4);

static __always_inline void count(int i) {
    u64 *v = counters.lookup(&i);
    if (v) *v += 1;
}


int rawcap_filter(struct __sk_buff *skb) {
    int zero = 0;
    struct cfg_t *c = cfg.lookup(&zero);
    if (!c) return 0;
    u32 flags = c->flags;
    if (flags & F_IFACES) {
        u32 ifi = skb->ifindex;
        if (!ifaces.lookup(&ifi)) return 0;
    }
    u32 off = 12;
    u16 proto = 0;
    if (bpf_skb_load_bytes(skb, off, &proto, 2) < 0) return 0;
    proto = ntohs(proto);
    #pragma unroll
    for (int i = 0; i < 2; i++) {
        if (proto == ETH_P_8021Q || proto == ETH_P_8021AD) {
            off += 4;
            if (bpf_skb_load_bytes(skb, off, &proto, 2) < 0) return 0;
            proto = ntohs(proto);
        }
    }
    off += 2;
    struct lpm_key_t src = {}, dst = {};
    u8 l4 = 0;
    u32 l4off = 0;
    int first_frag = 1;
    if (proto == ETH_P_IP) {
        u8 vihl = 0;
        if (bpf_skb_load_bytes(skb, off, &vihl, 1) < 0) return 0;
        if (bpf_skb_load_bytes(skb, off + 9, &l4, 1) < 0) return 0;
        u16 frag = 0;
        if (bpf_skb_load_bytes(skb, off + 6, &frag, 2) < 0) return 0;
        first_frag = (ntohs(frag) & 0x1fff) == 0;
        src.prefixlen = dst.prefixlen = 128;
        src.addr[10] = src.addr[11] = 0xff;
        dst.addr[10] = dst.addr[11] = 0xff;
        if (bpf_skb_load_bytes(skb, off + 12, &src.addr[12], 4) < 0) return 0;
        if (bpf_skb_load_bytes(skb, off + 16, &dst.addr[12], 4) < 0) return 0;
        l4off = off + (vihl & 0x0f) * 4;
    } else if (proto == ETH_P_IPV6) {
        if (bpf_skb_load_bytes(skb, off + 6, &l4, 1) < 0) return 0;
        src.prefixlen = dst.prefixlen = 128;
        if (bpf_skb_load_bytes(skb, off + 8, &src.addr, 16) < 0) return 0;
        if (bpf_skb_load_bytes(skb, off + 24, &dst.addr, 16) < 0) return 0;
        l4off = off + 40;
        // Walk up to four extension headers (hop-by-hop, routing, fragment, dest options)
        // so that fragmented or optioned TCP/UDP still counts as TCP/UDP.
        #pragma unroll
        for (int i = 0; i < 4; i++) {
            if (l4 == 44) {  // fragment header: next, reserved, offset+flags, id
                u8 fh[4] = {};
                if (bpf_skb_load_bytes(skb, l4off, &fh, 4) < 0) return 0;
                l4 = fh[0];
                if (((fh[2] << 8 | fh[3]) & 0xfff8) != 0) first_frag = 0;
                l4off += 8;
            } else if (l4 == 0 || l4 == 43 || l4 == 60) {
                u8 eh[2] = {};
                if (bpf_skb_load_bytes(skb, l4off, &eh, 2) < 0) return 0;
                l4 = eh[0];
                l4off += (eh[1] + 1) * 8;
            }
        }
    } else {
        count(3);
        return 0;
    }
    if (l4 != IPPROTO_TCP && l4 != IPPROTO_UDP) {
        count(3);
        return 0;
    }
    count(0);
    if (!(flags & (l4 == IPPROTO_TCP ? F_TCP : F_UDP))) goto reject;
    if (deny_ip.lookup(&src) || deny_ip.lookup(&dst)) goto reject;
    if ((flags & F_ALLOW_IPS) && !allow_ip.lookup(&src) && !allow_ip.lookup(&dst)) goto reject;
    u16 ports[2] = {};
    if (first_frag && bpf_skb_load_bytes(skb, l4off, &ports, 4) == 0) {
        u16 sport = ntohs(ports[0]), dport = ntohs(ports[1]);
        if (deny_port.lookup(&sport) || deny_port.lookup(&dport)) goto reject;
        if ((flags & F_ALLOW_PORTS) && !allow_port.lookup(&sport) && !allow_port.lookup(&dport))
            goto reject;
    } else if (flags & F_ALLOW_PORTS) {
        goto reject;
    }
    count(1);
    return c->snaplen ? c->snaplen : 0x7fffffff;
reject:
    count(2);
    return 0;
}
