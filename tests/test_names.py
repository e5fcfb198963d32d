"""The cluster's actor names, alone (zray._private.names): no processes."""

import pytest

from zray._private.names import ActorNames, NameTaken, anonymous_namespace


def entry(aid, node=b"n1"):
    return {"actor_id": aid, "anchor": aid + b"-anchor", "meta": {}, "node_id": node}


def test_a_name_belongs_to_one_actor_per_namespace():
    names = ActorNames()
    names.claim("app", "counter", entry(b"A"))
    names.claim("other", "counter", entry(b"B"))  # another namespace: another name
    with pytest.raises(NameTaken, match="already exists in namespace 'app'"):
        names.claim("app", "counter", entry(b"C"))
    assert names.lookup("app", "counter")["actor_id"] == b"A"
    assert names.lookup("other", "counter")["actor_id"] == b"B"


def test_get_if_exists_returns_the_actor_holding_the_name():
    names = ActorNames()
    names.claim("app", "counter", entry(b"A"))
    held, existing = names.claim("app", "counter", entry(b"C"), get_if_exists=True)
    assert existing and held["actor_id"] == b"A"
    again, existing = names.claim("app", "counter", entry(b"A"))  # its own: fine
    assert not existing and again["actor_id"] == b"A"


def test_a_released_name_is_free_but_only_its_own_actor_releases_it():
    names = ActorNames()
    names.claim("app", "counter", entry(b"A"))
    names.release("app", "counter", b"B")
    assert names.lookup("app", "counter")["actor_id"] == b"A"
    names.release("app", "counter", b"A")
    with pytest.raises(ValueError, match="no live actor"):
        names.lookup("app", "counter")
    names.claim("app", "counter", entry(b"C"))


def test_listings_by_namespace_and_the_names_of_a_dead_node_go():
    names = ActorNames()
    names.claim("app", "a", entry(b"A", b"n1"))
    names.claim("app", "b", entry(b"B", b"n2"))
    names.claim("x", "c", entry(b"C", b"n1"))
    assert names.listing("app") == [{"namespace": "app", "name": "a"},
                                    {"namespace": "app", "name": "b"}]
    assert len(names.listing(None)) == 3
    assert sorted(names.drop_node(b"n1")) == ["a", "c"]
    assert names.listing(None) == [{"namespace": "app", "name": "b"}]
    assert names.drop_node(b"n3", actors_there={b"B"}) == ["b"]  # placed on n3 from n2


def test_names_must_be_non_empty_strings_and_anonymous_namespaces_are_per_job():
    with pytest.raises(ValueError, match="non-empty string"):
        ActorNames().claim("app", "", entry(b"A"))
    assert anonymous_namespace(b"\x01\x02") == "anonymous-0102"
