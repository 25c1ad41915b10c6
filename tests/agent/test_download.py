import sys
def test_x():
    print(sys.path[:4])
    import tests.support.artifacts
