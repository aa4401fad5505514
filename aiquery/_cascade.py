class Cascades:
    def __init__(self, manyrow):
        self.manyrow = manyrow
