import socket

from facetrain.pipeline.ports import free_port
from facetrain.pipeline.train import launch


def test_free_port_can_be_listened_on_at_once():
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", port))  # raises if the port were taken
        server.listen()


def test_launch_uses_the_one_helper():
    assert launch.free_port is free_port
