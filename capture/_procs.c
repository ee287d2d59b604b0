// rawcap process context: which process owns a TCP/UDP flow (tracepoints only, no kprobes).
//
// Attribution happens on the syscall side, where `current` is the socket's owner:
//  - sys_enter_connect: remember the task; emit a "connect" record with the destination.
//  - inet_sock_set_state CLOSE->SYN_SENT (still inside connect()): bind the task to the sock.
//  - inet_sock_set_state SYN_SENT->ESTABLISHED (softirq): emit "tcp" with the full 5-tuple
//    and the task remembered for that sock, not whatever runs in softirq.
//  - inet_sock_set_state ->LISTEN (inside listen()): emit "listen".
//  - sys_enter_sendto with a destination: emit "udp", deduplicated per (tgid, dst) in an LRU.
#include <uapi/linux/ptrace.h>
#include <linux/socket.h>
#include <linux/in.h>
#include <linux/in6.h>

#define K_TCP 1
#define K_LISTEN 2
#define K_CONNECT 3
#define K_UDP 4
#define DEDUP_NS (10ull * 1000000000ull)

struct owner_t {
    u32 pid;   // tgid
    u32 tid;
    u64 cgroup;
    char comm[16];
};

struct event_t {
    u64 ts;
    u64 cgroup;
    u32 pid;
    u32 tid;
    u32 kind;
    u16 family;
    u16 proto;
    u16 sport;
    u16 dport;
    u8 saddr[16];
    u8 daddr[16];
    char comm[16];
};

struct dedup_key_t {
    u32 pid;
    u16 dport;
    u16 family;
    u8 daddr[16];
};

BPF_RINGBUF_OUTPUT(events, 1 << 10);   // pages
BPF_TABLE("lru_hash", u64, struct owner_t, sk_owner, 65536);
BPF_TABLE("lru_hash", struct dedup_key_t, u64, udp_seen, 65536);

static __always_inline void fill_owner(struct owner_t *o) {
    u64 id = bpf_get_current_pid_tgid();
    o->pid = id >> 32;
    o->tid = (u32)id;
    o->cgroup = bpf_get_current_cgroup_id();
    bpf_get_current_comm(&o->comm, sizeof(o->comm));
}

static __always_inline void emit_owner(struct event_t *e, struct owner_t *o) {
    e->pid = o->pid;
    e->tid = o->tid;
    e->cgroup = o->cgroup;
    __builtin_memcpy(e->comm, o->comm, 16);
}

// Reads a user sockaddr into family/port/address; returns 0 on AF_INET/AF_INET6.
static __always_inline int read_sockaddr(const void *uaddr, u16 *family, u16 *port, u8 *addr) {
    struct sockaddr_in6 sa = {};
    if (!uaddr) return -1;
    if (bpf_probe_read_user(&sa, sizeof(sa.sin6_family) + sizeof(sa.sin6_port), uaddr) < 0) return -1;
    *family = sa.sin6_family;
    *port = ntohs(sa.sin6_port);
    if (sa.sin6_family == AF_INET) {
        struct sockaddr_in s4 = {};
        if (bpf_probe_read_user(&s4, sizeof(s4), uaddr) < 0) return -1;
        addr[10] = 0xff; addr[11] = 0xff;
        __builtin_memcpy(addr + 12, &s4.sin_addr, 4);
        return 0;
    }
    if (sa.sin6_family == AF_INET6) {
        if (bpf_probe_read_user(&sa, sizeof(sa), uaddr) < 0) return -1;
        __builtin_memcpy(addr, &sa.sin6_addr, 16);
        return 0;
    }
    return -1;
}

TRACEPOINT_PROBE(syscalls, sys_enter_connect) {
    struct event_t *e = events.ringbuf_reserve(sizeof(struct event_t));
    if (!e) return 0;
    __builtin_memset(e, 0, sizeof(*e));
    if (read_sockaddr((const void *)args->uservaddr, &e->family, &e->dport, e->daddr) < 0) {
        events.ringbuf_discard(e, 0);
        return 0;
    }
    struct owner_t o = {};
    fill_owner(&o);
    emit_owner(e, &o);
    e->ts = bpf_ktime_get_ns();
    e->kind = K_CONNECT;
    events.ringbuf_submit(e, 0);
    return 0;
}

static __always_inline int on_send(const void *uaddr) {
    struct dedup_key_t k = {};
    u16 family = 0, port = 0;
    if (read_sockaddr(uaddr, &family, &port, k.daddr) < 0) return 0;
    k.pid = bpf_get_current_pid_tgid() >> 32;
    k.dport = port;
    k.family = family;
    u64 now = bpf_ktime_get_ns();
    u64 *last = udp_seen.lookup(&k);
    if (last && now - *last < DEDUP_NS) return 0;
    udp_seen.update(&k, &now);
    struct event_t *e = events.ringbuf_reserve(sizeof(struct event_t));
    if (!e) return 0;
    __builtin_memset(e, 0, sizeof(*e));
    struct owner_t o = {};
    fill_owner(&o);
    emit_owner(e, &o);
    e->ts = now;
    e->kind = K_UDP;
    e->family = family;
    e->proto = IPPROTO_UDP;
    e->dport = port;
    __builtin_memcpy(e->daddr, k.daddr, 16);
    events.ringbuf_submit(e, 0);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_sendto) {
    return on_send((const void *)args->addr);
}

TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg) {
    struct user_msghdr m = {};
    if (bpf_probe_read_user(&m, sizeof(m), (const void *)args->msg) < 0) return 0;
    return on_send(m.msg_name);
}

TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != IPPROTO_TCP) return 0;
    u64 sk = (u64)args->skaddr;
    if (args->newstate == 2 /* SYN_SENT */) {
        struct owner_t o = {};
        fill_owner(&o);
        sk_owner.update(&sk, &o);
        return 0;
    }
    if (args->newstate == 7 /* CLOSE */) {
        sk_owner.delete(&sk);
        return 0;
    }
    int kind = 0;
    struct owner_t here = {};
    struct owner_t *o = 0;
    if (args->newstate == 1 /* ESTABLISHED */ && args->oldstate == 2) {
        o = sk_owner.lookup(&sk);
        if (!o) return 0;
        kind = K_TCP;
    } else if (args->newstate == 10 /* LISTEN */) {
        fill_owner(&here);
        o = &here;
        kind = K_LISTEN;
    } else {
        return 0;
    }
    struct event_t *e = events.ringbuf_reserve(sizeof(struct event_t));
    if (!e) return 0;
    __builtin_memset(e, 0, sizeof(*e));
    emit_owner(e, o);
    e->ts = bpf_ktime_get_ns();
    e->kind = kind;
    e->family = args->family;
    e->proto = IPPROTO_TCP;
    e->sport = args->sport;
    e->dport = args->dport;
    if (args->family == AF_INET) {
        e->saddr[10] = 0xff; e->saddr[11] = 0xff;
        e->daddr[10] = 0xff; e->daddr[11] = 0xff;
        __builtin_memcpy(e->saddr + 12, args->saddr, 4);
        __builtin_memcpy(e->daddr + 12, args->daddr, 4);
    } else {
        __builtin_memcpy(e->saddr, args->saddr_v6, 16);
        __builtin_memcpy(e->daddr, args->daddr_v6, 16);
    }
    if (kind == K_TCP) sk_owner.delete(&sk);
    events.ringbuf_submit(e, 0);
    return 0;
}
