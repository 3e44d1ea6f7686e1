import service_framework


def test_public_api_is_exported() -> None:
    for name in service_framework.__all__:
        assert hasattr(service_framework, name), name
