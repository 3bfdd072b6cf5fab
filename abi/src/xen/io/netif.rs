//! `io/netif.h`: the network device rings (tx and rx requests and responses, extra info).
